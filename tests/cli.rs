//! The `tastebud` binary end to end: scores equal transformers' on the tiny fixtures, and bad
//! input fails with a message that names what is wrong.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn tastebud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tastebud"))
        .args(args)
        .output()
        .expect("run tastebud")
}

fn fixture(path: &str) -> String {
    fixtures().join(path).display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn score_prints_transformers_numbers_on_cpu_and_gpu() {
    let reference = reference_json();
    for flavour in ["clip-openai", "clip-openclip"] {
        let prompt = reference[flavour]["scored_prompts"][0]
            .as_str()
            .unwrap()
            .to_string();
        let (logits, shape) = reference_tensor(&format!("{flavour}.logits_per_image"));
        let (cosine, _) = reference_tensor(&format!("{flavour}.cosine"));
        for device in ["cpu", "gpu"] {
            let out = tastebud(&[
                "score",
                "--model",
                &fixture(flavour),
                "--prompt",
                &prompt,
                "--device",
                device,
                "--json",
                &fixture("image0.png"),
                &fixture("image1.png"),
            ]);
            assert!(out.status.success(), "{flavour} {device}: {}", stderr(&out));
            let json: Value = serde_json::from_slice(&out.stdout).unwrap();
            let scores = json["scores"].as_array().unwrap();
            assert_eq!(scores.len(), 2);
            // Column 0 of logits_per_image: each image against the first prompt.
            let got_logit: Vec<f32> = scores
                .iter()
                .map(|s| s["logit"].as_f64().unwrap() as f32)
                .collect();
            let got_cos: Vec<f32> = scores
                .iter()
                .map(|s| s["cosine"].as_f64().unwrap() as f32)
                .collect();
            let want_logit: Vec<f32> = (0..2).map(|i| logits[i * shape[1]]).collect();
            let want_cos: Vec<f32> = (0..2).map(|i| cosine[i * shape[1]]).collect();
            assert_close(
                &format!("{flavour} {device} logit"),
                &got_logit,
                &want_logit,
                1e-4,
            );
            assert_close(
                &format!("{flavour} {device} cosine"),
                &got_cos,
                &want_cos,
                1e-4,
            );
        }
    }
}

#[test]
fn repeat_reports_median_timings_in_json() {
    let out = tastebud(&[
        "score",
        "--model",
        &fixture("clip-openai"),
        "--prompt",
        "a cat",
        "--device",
        "cpu",
        "--json",
        "--repeat",
        "3",
        &fixture("image0.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runs"], 3);
    assert!(json["score_ms"].as_f64().unwrap() > 0.0 && json["load_ms"].as_f64().unwrap() > 0.0);
    assert!(stderr(&out).contains("(median of 3)"), "{}", stderr(&out));
}

#[test]
fn score_prints_a_table_by_default() {
    let out = tastebud(&[
        "score",
        "--model",
        &fixture("clip-openai"),
        "--prompt",
        "a cat",
        "--device",
        "cpu",
        &fixture("image0.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cosine") && text.contains("image0.png"),
        "{text}"
    );
    assert!(stderr(&out).contains("device: flex (CPU)"));
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let model = fixture("clip-openai");
    let image = fixture("image0.png");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "score",
                "--model",
                "/nonexistent/clip",
                "--prompt",
                "a",
                &image,
            ],
            "/nonexistent/clip: not a folder",
        ),
        (
            vec![
                "score",
                "--model",
                &model,
                "--prompt",
                "a",
                "/nonexistent/cat.png",
            ],
            "reading image /nonexistent/cat.png",
        ),
        (
            vec!["score", "--model", &model, "--prompt", "a", &model],
            "reading image",
        ),
        (
            vec![
                "score", "--model", &model, "--prompt", "a", "--device", "tpu", &image,
            ],
            "`tpu` is not one of auto, gpu, cpu",
        ),
        (
            vec![
                "score", "--model", &model, "--prompt", " ", "--device", "cpu", &image,
            ],
            "prompt: the prompt is empty",
        ),
    ];
    cases.push((
        vec![
            "score", "--model", &model, "--prompt", "a", "--repeat", "0", &image,
        ],
        "--repeat",
    ));
    let long_prompt = "a ".repeat(100);
    cases.push((
        vec![
            "score",
            "--model",
            &model,
            "--prompt",
            &long_prompt,
            "--device",
            "cpu",
            &image,
        ],
        "102 tokens",
    ));
    for (args, expected) in cases {
        let out = tastebud(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: stderr was {}",
            stderr(&out)
        );
    }
}

#[test]
fn fixture_png_that_is_not_an_image_is_named() {
    let dir = std::env::temp_dir().join(format!("tastebud-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("fake.png");
    std::fs::write(&fake, b"not an image").unwrap();
    let out = tastebud(&[
        "score",
        "--model",
        &fixture("clip-openai"),
        "--prompt",
        "a",
        "--device",
        "cpu",
        fake.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fake.png") && stderr(&out).contains("not a PNG or JPEG"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn devices_lists_cpu_and_wgpu_adapters() {
    let out = tastebud(&["devices", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cpu"], "flex");
    let adapters = json["wgpu_adapters"].as_array().unwrap();
    assert!(
        !adapters.is_empty(),
        "no wgpu adapter: is mesa-vulkan-drivers installed?"
    );
    assert!(
        adapters
            .iter()
            .all(|a| a["name"].is_string() && a["api"].is_string())
    );
}
