//! The shapes world from the command line: renders, the judge (verdicts, reasons, bad input),
//! training sets, the committed evaluation suite.

mod cli_common;
mod common;

use std::path::PathBuf;

use cli_common::*;
use common::*;
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    temp_in("shapes", name)
}

fn render(prompt: &str, seed: u64, name: &str) -> String {
    let path = temp(name).display().to_string();
    let out = tastebud(&[
        "shapes",
        "render",
        "--prompt",
        prompt,
        "--seed",
        &seed.to_string(),
        "--out",
        &path,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

#[test]
fn the_judge_reads_renders_and_says_why_a_prompt_fails() {
    let three = render("three red circles", 4, "three.png");
    let out = tastebud(&["judge", "--prompt", "a photo of three red circles", &three]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("holds (counting task)"), "{text}");
    assert!(text.contains("red circle, "), "{text}");

    let out = tastebud(&["judge", "--prompt", "two circles", "--json", &three]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = &json["verdicts"][0];
    assert_eq!(verdict["holds"], false);
    assert_eq!(
        verdict["reasons"][0],
        "found 3 circles, wanted fewer than 3"
    );
    assert_eq!(verdict["found"].as_array().unwrap().len(), 3);
    assert_eq!(json["metadata"]["exclude"][0]["count"], 3);

    let left = render(
        "a blue square to the left of a yellow triangle",
        1,
        "left.png",
    );
    let out = tastebud(&[
        "judge",
        "--prompt",
        "a blue square right of a yellow triangle",
        "--json",
        &left,
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = json["verdicts"][0]["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("wanted the square right of the triangle, it is left of it"),
        "{reason}"
    );
}

#[test]
fn the_judge_refuses_what_it_cannot_read() {
    let one = render("a circle", 0, "one.png");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--prompt".into(), "a photo of a dog".into(), one.clone()],
            "unknown shape `dog`",
        ),
        (
            vec![
                "--prompt".into(),
                "a circle".into(),
                fixtures().join("image0.png").display().to_string(),
            ],
            "300x200: the shapes judge reads 64x64 pictures",
        ),
        (
            vec![
                "--prompt".into(),
                "a circle".into(),
                "/nonexistent.png".into(),
            ],
            "reading /nonexistent.png",
        ),
    ];
    for (args, named) in cases {
        let mut all = vec!["judge"];
        all.extend(args.iter().map(String::as_str));
        let out = tastebud(&all);
        assert_eq!(out.status.code(), Some(1), "{named}");
        assert!(stderr(&out).contains(named), "{named}: {}", stderr(&out));
    }
}

#[test]
fn judge_set_scores_every_task_and_renders_score_one() {
    let mut manifest = String::new();
    for (i, prompt) in [
        "a square",
        "a circle and a triangle",
        "four discs",
        "a purple triangle",
        "a red circle above a blue square",
        "a green square and an orange circle",
    ]
    .iter()
    .enumerate()
    {
        let image = render(prompt, i as u64, &format!("set{i}.png"));
        manifest.push_str(&format!(
            "{{\"prompt\": \"{prompt}\", \"image\": \"{image}\"}}\n"
        ));
    }
    // One wrong picture: a square is not a triangle.
    let wrong = render("a square", 9, "wrong.png");
    manifest.push_str(&format!(
        "{{\"prompt\": \"a triangle\", \"image\": \"{wrong}\"}}\n"
    ));
    let path = temp("manifest.jsonl");
    std::fs::write(&path, manifest).unwrap();
    let out = tastebud(&[
        "shapes",
        "judge-set",
        "--manifest",
        &path.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["images"], 7);
    assert_eq!(json["tasks"]["single_object"]["accuracy"], 0.5);
    for task in ["two_object", "counting", "colors", "position", "color_attr"] {
        assert_eq!(json["tasks"][task]["accuracy"], 1.0, "{task}");
    }
    let overall = json["overall"].as_f64().unwrap();
    assert!((overall - 5.5 / 6.0).abs() < 1e-9, "{overall}");
    // Renders stay in the world: (almost) every pixel is background or a palette colour.
    let off_world = json["off_world"].as_f64().unwrap();
    assert!((0.0..0.01).contains(&off_world), "{off_world}");
    for task in ["single_object", "position"] {
        let share = json["tasks"][task]["off_world"].as_f64().unwrap();
        assert!((0.0..0.01).contains(&share), "{task}: {share}");
    }
}

/// The committed suite is what the seeded generator makes.
#[test]
fn the_committed_eval_set_is_reproducible() {
    let path = temp("eval.jsonl");
    let out = tastebud(&["shapes", "eval-set", "--out", &path.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = std::fs::read_to_string(&path).unwrap();
    let committed = fixtures().join("../../models/shapes/eval.jsonl");
    let committed = std::fs::read_to_string(committed).expect("models/shapes/eval.jsonl");
    assert_eq!(made, committed);
    let tags: Vec<String> = made
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["tag"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for task in [
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    ] {
        assert!(tags.iter().filter(|t| *t == task).count() >= 20, "{task}");
    }
}

#[test]
fn a_training_set_holds_pictures_captions_and_hard_negatives() {
    let dir = temp("dataset");
    let out = tastebud(&[
        "shapes",
        "dataset",
        "--count",
        "30",
        "--seed",
        "7",
        "--out",
        &dir.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let npy = std::fs::read(dir.join("images.npy")).unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = String::from_utf8_lossy(&npy[10..10 + header_len]);
    assert!(header.contains("'shape': (30, 64, 64, 3)"), "{header}");
    assert_eq!(npy.len(), 10 + header_len + 30 * 64 * 64 * 3);
    assert_eq!((10 + header_len) % 64, 0);
    let captions = std::fs::read_to_string(dir.join("captions.jsonl")).unwrap();
    let rows: Vec<Value> = captions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 30);
    for row in &rows {
        assert_eq!(row["caption"], row["metadata"]["prompt"]);
        let negatives = row["negatives"].as_array().unwrap();
        assert!(!negatives.is_empty());
        assert!(negatives.iter().all(|n| *n != row["caption"]));
    }
}

/// `shapes eval` generates every (prompt, seed) of a suite, judges it, and keeps pictures with
/// a manifest that `shapes judge-set` scores the same.
#[test]
fn eval_generates_judges_and_keeps_a_manifest() {
    let suite = temp("suite.jsonl");
    let all = std::fs::read_to_string(fixtures().join("../../models/shapes/eval.jsonl")).unwrap();
    let lines: Vec<&str> = all.lines().step_by(100).collect();
    std::fs::write(&suite, lines.join("\n")).unwrap();
    let out_dir = temp("eval-out");
    let out = tastebud(&[
        "shapes",
        "eval",
        "--model",
        &fixtures().join("sd1-tiny").display().to_string(),
        "--prompts",
        &suite.display().to_string(),
        "--seeds",
        "2",
        "--device",
        "cpu",
        "--out",
        &out_dir.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 2 * lines.len());
    assert_eq!(report["seeds"], 2);
    assert!(report["ms_per_image"].as_f64().unwrap() > 0.0);
    // A random-weight model draws nothing the judge recognises.
    assert_eq!(report["overall"], 0.0);
    let manifest = out_dir.join("manifest.jsonl");
    let rows = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(rows.lines().count(), 2 * lines.len());
    assert!(out_dir.join("0000-1.png").is_file());
    let again = tastebud(&[
        "shapes",
        "judge-set",
        "--manifest",
        &manifest.display().to_string(),
    ]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["overall"], report["overall"]);
    assert_eq!(again["tasks"], report["tasks"]);
}
