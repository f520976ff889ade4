//! The shipped shapes-world models (models/shapes/): their manifest, a damaged copy named, parity
//! of the trained weights with diffusers and transformers (tests/reference/make_shapes_fixtures.py),
//! and the defaults that use them (`generate`, `score`, `optimize` without a model).

mod cli_common;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_common::*;
use common::*;
use serde_json::Value;

fn models() -> PathBuf {
    fixtures().join("../../models")
}

fn tastebud(args: &[&str], models_root: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tastebud"));
    cmd.args(args);
    if let Some(root) = models_root {
        cmd.env("TASTEBUD_MODELS", root);
    }
    cmd.output().expect("run tastebud")
}

fn temp(name: &str) -> PathBuf {
    temp_in("models", name)
}

fn manifest() -> Value {
    let bytes = std::fs::read(models().join("shapes/manifest.json")).expect("manifest.json");
    serde_json::from_slice(&bytes).unwrap()
}

/// Every shipped file is listed with its size and hash, nothing else ships, and all of it stays
/// small enough for a browser tab.
#[test]
fn the_manifest_lists_every_shipped_file_exactly() {
    let m = manifest();
    let listed: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    let mut on_disk = vec![];
    for folder in ["generator", "clip", "proxy"] {
        let root = models().join("shapes");
        let mut stack = vec![root.join(folder)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .to_string();
                    on_disk.push(rel);
                }
            }
        }
    }
    on_disk.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed_sorted.sort();
    assert_eq!(on_disk, listed_sorted);
    let mut total = 0;
    for f in m["files"].as_array().unwrap() {
        let path = models().join("shapes").join(f["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.len() as u64,
            f["bytes"].as_u64().unwrap(),
            "{}",
            path.display()
        );
        assert_eq!(
            tastebud_core::manifest::sha256_hex(&bytes),
            f["sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
        total += bytes.len();
    }
    assert!(total <= 25_000_000, "{total} bytes shipped");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A damaged shipped file is named before anything is loaded from it.
#[test]
fn a_damaged_shipped_model_is_named() {
    let root = temp("models");
    copy_tree(&models().join("shapes"), &root.join("shapes"));
    let unet = root.join("shapes/generator/unet/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&unet).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&unet, bytes).unwrap();
    let out_png = temp("damaged.png").display().to_string();
    let out = tastebud(
        &["generate", "--prompt", "a red circle", "--out", &out_png],
        Some(&root),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("unet/diffusion_pytorch_model.safetensors: damaged: sha256"),
        "{err}"
    );
    // Missing models: the error says where they were looked for.
    let out = tastebud(
        &["generate", "--prompt", "a red circle", "--out", &out_png],
        Some(&temp("nowhere")),
    );
    assert!(
        stderr(&out).contains("the shipped shapes-world model is not at"),
        "{}",
        stderr(&out)
    );
}

/// `optimize --method pruned` on the shipped generator scores its candidates through the
/// shipped proxy decoder (no `--proxy-decoder` needed), checked against the manifest like the
/// rest: a damaged proxy is named, a missing one says where it was looked for.
#[test]
fn pruning_uses_the_shipped_proxy_decoder() {
    let png = temp("pruned.png").display().to_string();
    let args = [
        "optimize",
        "--prompt",
        "a red circle",
        "--method",
        "pruned",
        "--budget",
        "8",
        "--device",
        "cpu",
        "--json",
        "--out",
        &png,
    ];
    let out = tastebud(&args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("model: the shipped shapes-world proxy"),
        "{}",
        stderr(&out)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["width"].as_u64(), json["height"].as_u64()),
        (Some(64), Some(64))
    );
    let best = json["best_scores"]["rewards"][0].as_f64().unwrap();
    assert!(best.is_finite() && best > 0.0, "best CLIP score {best}");
    assert_eq!(image::open(&png).unwrap().width(), 64);

    let root = temp("models-proxy");
    copy_tree(&models().join("shapes"), &root.join("shapes"));
    let proxy = root.join("shapes/proxy/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&proxy).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&proxy, bytes).unwrap();
    let out = tastebud(&args, Some(&root));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("proxy/diffusion_pytorch_model.safetensors: damaged: sha256"),
        "{}",
        stderr(&out)
    );
    // A missing proxy: the error says where it was looked for.
    std::fs::remove_dir_all(root.join("shapes/proxy")).unwrap();
    let out = tastebud(&args, Some(&root));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the shipped shapes-world model is not at")
            && stderr(&out).contains("proxy"),
        "{}",
        stderr(&out)
    );
}

fn shapes_reference() -> Value {
    let bytes = std::fs::read(fixtures().join("shapes/reference.json")).expect("reference.json");
    serde_json::from_slice(&bytes).unwrap()
}

/// diffusers' pipeline on the shipped snapshot and `tastebud generate --noise` (its default
/// model) agree within one level per channel, with its VAE and with the shipped proxy decoder;
/// transformers' CLIP and `tastebud score` (its default reward) agree at rtol 1e-4.
#[test]
fn the_shipped_models_match_diffusers_and_transformers() {
    for case in shapes_reference()["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let noise = fixtures()
            .join("shapes")
            .join(case["noise"].as_str().unwrap());
        let steps = case["steps"].as_u64().unwrap().to_string();
        let png = temp(&format!("parity-{}", case["image"].as_str().unwrap()));
        let proxy = models().join("shapes/proxy").display().to_string();
        // Its VAE on both devices, and the proxy decoder `optimize --method pruned` uses,
        // swapped in as TAESD is.
        for (device, decoder, fixture) in [
            ("cpu", None, "image"),
            ("gpu", None, "image"),
            ("cpu", Some(proxy.as_str()), "proxy_image"),
        ] {
            let noise = noise.display().to_string();
            let png_arg = png.display().to_string();
            let mut args = vec![
                "generate", "--prompt", prompt, "--noise", &noise, "--steps", &steps, "--device",
                device, "--out", &png_arg,
            ];
            if let Some(decoder) = decoder {
                args.extend(["--decoder", decoder]);
            }
            let out = tastebud(&args, None);
            assert!(out.status.success(), "{}", stderr(&out));
            let ours = image::open(&png).unwrap().to_rgb8();
            let (w, h, want) = fixture_png(&format!("shapes/{}", case[fixture].as_str().unwrap()));
            assert_eq!((ours.width() as usize, ours.height() as usize), (w, h));
            let diff = max_pixel_diff(ours.as_raw(), &want);
            assert!(
                diff <= 1,
                "{prompt:?} on {device} ({fixture}): pixels differ by {diff}"
            );
        }
        let image = fixtures()
            .join("shapes")
            .join(case["image"].as_str().unwrap());
        let out = tastebud(
            &[
                "score",
                "--prompt",
                prompt,
                "--device",
                "cpu",
                "--json",
                &image.display().to_string(),
            ],
            None,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = json["scores"][0]["rewards"]["clip"].as_f64().unwrap() as f32;
        let want = case["clip_logit"].as_f64().unwrap() as f32;
        assert_close(&format!("clip score of {prompt:?}"), &[got], &[want], 1e-4);
    }
}
