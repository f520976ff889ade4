//! The `tastebud` binary end to end: scores equal transformers' on the tiny fixtures, and bad
//! input fails with a message that names what is wrong.

mod cli_common;
mod common;

use std::process::Command;

use cli_common::*;
use common::*;
use serde_json::Value;

fn fixture(path: &str) -> String {
    fixtures().join(path).display().to_string()
}

/// `--preprocess torchvision` reproduces transformers 5's `CLIPImageProcessor` and model.
#[test]
fn score_prints_transformers_numbers_on_cpu_and_gpu() {
    let reference = reference_json();
    for (flavour, reward) in [("clip-openai", "clip"), ("clip-openclip", "pickscore")] {
        let prompt = reference[flavour]["scored_prompts"][0]
            .as_str()
            .unwrap()
            .to_string();
        let (logits, shape) = reference_tensor(&format!("{flavour}.logits_per_image"));
        for device in ["cpu", "gpu"] {
            let out = tastebud(&[
                "score",
                "--reward",
                &format!("{reward}={}:2", fixture(flavour)),
                "--prompt",
                &prompt,
                "--device",
                device,
                "--preprocess",
                "torchvision",
                "--json",
                &fixture("image0.png"),
                &fixture("image1.png"),
            ]);
            assert!(out.status.success(), "{flavour} {device}: {}", stderr(&out));
            let json: Value = serde_json::from_slice(&out.stdout).unwrap();
            let scores = json["scores"].as_array().unwrap();
            assert_eq!(scores.len(), 2);
            assert_eq!(json["rewards"][0]["weight"], 2.0);
            // Column 0 of logits_per_image: each image against the first prompt.
            let got: Vec<f32> = scores
                .iter()
                .map(|s| s["rewards"][reward].as_f64().unwrap() as f32)
                .collect();
            let total: Vec<f32> = scores
                .iter()
                .map(|s| s["weighted_total"].as_f64().unwrap() as f32)
                .collect();
            let want: Vec<f32> = (0..2).map(|i| logits[i * shape[1]]).collect();
            assert_close(&format!("{flavour} {device}"), &got, &want, 1e-4);
            let want_total: Vec<f32> = want.iter().map(|w| 2.0 * w).collect();
            assert_close(
                &format!("{flavour} {device} total"),
                &total,
                &want_total,
                1e-4,
            );
        }
    }
}

/// Three rewards in their published layouts (a transformers folder, HPSv2's `.pt`, LAION's
/// aesthetic `.pth` beside a CLIP) scored together; ReNO's default weights when none is given.
#[test]
fn score_combines_rewards_from_their_published_files() {
    let out = tastebud(&[
        "score",
        "--reward",
        &format!("clip={}", fixture("clip-openai")),
        "--reward",
        &format!(
            "hps={}",
            fixture("rewards/open-clip-tiny/HPS_v2.1_compressed.pt")
        ),
        "--reward",
        &format!(
            "aesthetic={},{}:0.5",
            fixture("rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth"),
            fixture("clip-openai")
        ),
        "--prompt",
        "a photo of a cat",
        "--device",
        "cpu",
        "--json",
        &fixture("image0.png"),
        &fixture("image1.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let weights = [0.01f32, 5.0, 0.5];
    let constants = [100.0f32, 1.0, 10.0];
    for (i, (name, weight)) in ["clip", "hps", "aesthetic"].iter().zip(weights).enumerate() {
        assert_eq!(json["rewards"][i]["label"], *name);
        assert_eq!(
            json["rewards"][i]["weight"].as_f64().unwrap() as f32,
            weight
        );
    }
    let want: Vec<Vec<f32>> = ["clip", "hps", "aesthetic"]
        .iter()
        .map(|n| {
            reference_tensor_in("rewards/reference.safetensors", &format!("{n}.file_scores")).0
        })
        .collect();
    for (img, row) in json["scores"].as_array().unwrap().iter().enumerate() {
        let mut loss = 0.0;
        for (r, name) in ["clip", "hps", "aesthetic"].iter().enumerate() {
            let got = row["rewards"][name].as_f64().unwrap() as f32;
            assert_close(&format!("{name} image{img}"), &[got], &[want[r][img]], 1e-4);
            loss += weights[r] * (constants[r] - want[r][img]);
        }
        let got = row["loss"].as_f64().unwrap() as f32;
        assert!((got - loss).abs() < 1e-3, "loss {got} vs {loss}");
    }
}

/// ImageReward from its folder (ImageReward.pt, med_config.json, vocab.txt) at ReNO's default
/// weight 1: loss = 2 - score.
#[test]
fn score_imagereward_from_its_published_files() {
    let out = tastebud(&[
        "score",
        "--reward",
        &format!("imagereward={}", fixture("rewards/imagereward-tiny")),
        "--prompt",
        "a photo of a cat",
        "--device",
        "cpu",
        "--json",
        &fixture("image0.png"),
        &fixture("image1.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["scores"].as_array().unwrap();
    let got: Vec<f32> = rows
        .iter()
        .map(|s| s["rewards"]["imagereward"].as_f64().unwrap() as f32)
        .collect();
    let (mut want, _) = reference_tensor_in(
        "rewards/imagereward-tiny/reference.safetensors",
        "imagereward.file_scores",
    );
    want.truncate(2); // the reference scores two more files
    assert_close("imagereward file scores", &got, &want, 1e-4);
    for (row, w) in rows.iter().zip(&want) {
        let loss = row["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - (2.0 - w)).abs() < 1e-4,
            "loss {loss} vs {}",
            2.0 - w
        );
    }
}

/// DINOv2 similarity: reference images are extra paths of the reward.
#[test]
fn score_dino_takes_reference_images_as_paths() {
    let out = tastebud(&[
        "score",
        "--reward",
        &format!(
            "dino={},{}",
            fixture("rewards/dinov2-tiny"),
            fixture("image1.png")
        ),
        "--prompt",
        "unused by dino",
        "--device",
        "cpu",
        "--json",
        &fixture("image0.png"),
        &fixture("image1.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f32> = json["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rewards"]["dino"].as_f64().unwrap() as f32)
        .collect();
    let (want, _) = reference_tensor_in("rewards/reference.safetensors", "dino.file_scores");
    assert_close("dino file scores", &got, &want[..2], 1e-4);
    // image1 is its own reference.
    assert!((got[1] - 1.0).abs() < 1e-5, "{}", got[1]);
}

#[test]
fn repeat_reports_median_timings_in_json() {
    let out = tastebud(&[
        "score",
        "--reward",
        &format!("clip={}", fixture("clip-openai")),
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
        "--reward",
        &format!("clip={}", fixture("clip-openai")),
        "--prompt",
        "a cat",
        "--device",
        "cpu",
        &fixture("image0.png"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("clip") && text.contains("total") && text.contains("image0.png"),
        "{text}"
    );
    assert!(stderr(&out).contains("device: flex (CPU)"));
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let model = format!("clip={}", fixture("clip-openai"));
    let image = fixture("image0.png");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "score",
                "--reward",
                "clip=/nonexistent/clip",
                "--prompt",
                "a",
                &image,
            ],
            "/nonexistent/clip does not exist",
        ),
        (
            vec!["score", "--reward", "beauty=/x", "--prompt", "a", &image],
            "`beauty` is not one of clip, pickscore, hps, aesthetic",
        ),
        (
            vec![
                "score",
                "--reward",
                "clip=/x:heavy",
                "--prompt",
                "a",
                &image,
            ],
            "weight `heavy` is not a number",
        ),
        (
            vec![
                "score",
                "--reward",
                &model,
                "--prompt",
                "a",
                "/nonexistent/cat.png",
            ],
            "reading image /nonexistent/cat.png",
        ),
        (
            vec!["score", "--reward", &model, "--prompt", "a", &model],
            "reading image",
        ),
        (
            vec![
                "score", "--reward", &model, "--prompt", "a", "--device", "tpu", &image,
            ],
            "`tpu` is not one of auto, gpu, cpu",
        ),
        (
            vec![
                "score", "--reward", &model, "--prompt", " ", "--device", "cpu", &image,
            ],
            "prompt: the prompt is empty",
        ),
    ];
    cases.push((
        vec![
            "score", "--reward", &model, "--prompt", "a", "--repeat", "0", &image,
        ],
        "--repeat",
    ));
    let long_prompt = "a ".repeat(100);
    cases.push((
        vec![
            "score",
            "--reward",
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
        "--reward",
        &format!("clip={}", fixture("clip-openai")),
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

/// A plain successful run on a machine without a display prints no error lines (Mesa's Vulkan
/// device-select layer used to print "error: XDG_RUNTIME_DIR is invalid or not set" twice).
#[test]
fn a_successful_run_prints_no_errors_without_a_display() {
    let out_path = temp_png("quiet.png").display().to_string();
    for device in ["auto", "gpu"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tastebud"))
            .args([
                "generate",
                "--model",
                &fixture("sd-turbo-tiny"),
                "--prompt",
                "a cat",
                "--width",
                "40",
                "--height",
                "48",
                "--device",
                device,
                "--out",
                &out_path,
            ])
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("NODEVICE_SELECT")
            .output()
            .expect("run tastebud");
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        let errors: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("error"))
            .collect();
        assert!(errors.is_empty(), "{device}: {errors:?}");
    }
}

/// A `.pt` whose pickle nests lists a million deep once overflowed the stack ("fatal runtime
/// error: stack overflow"); now it is a clear error.
#[test]
fn a_hostile_checkpoint_is_an_error_not_a_crash() {
    let path = temp_png("deep.pt");
    std::fs::write(&path, torch_archive(&nested_lists_pickle(1_000_000))).unwrap();
    let out = tastebud(&[
        "score",
        "--reward",
        &format!("hps={}", path.display()),
        "--prompt",
        "a cat",
        &fixture("image0.png"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deep.pt") && stderr(&out).contains("a state dict needs far fewer"),
        "{}",
        stderr(&out)
    );
}

fn temp_png(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tastebud-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `tastebud generate --noise` reproduces diffusers' PNG within 1 level, on the CPU and the
/// GPU, and records the prompt, noise, steps and model in the PNG's text chunks.
#[test]
fn generate_reproduces_diffusers_pngs() {
    let reference = reference_json();
    let cases = reference["pipelines"].as_array().unwrap();
    for (i, device) in [(0, "cpu"), (2, "gpu"), (4, "cpu")] {
        let case = &cases[i];
        let out_path = temp_png(&format!("case{i}.png"));
        let steps = case["steps"].to_string();
        let out = tastebud(&[
            "generate",
            "--model",
            &fixture(case["model"].as_str().unwrap()),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--noise",
            &fixture(case["noise"].as_str().unwrap()),
            "--steps",
            &steps,
            "--device",
            device,
            "--json",
            "--out",
            &out_path.display().to_string(),
        ]);
        assert!(out.status.success(), "case {i}: {}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json["ms"]["denoise"].as_f64().unwrap() > 0.0);
        let got = image::open(&out_path).unwrap().to_rgb8().into_raw();
        let (_, _, want) = fixture_png(case["image"].as_str().unwrap());
        assert!(max_pixel_diff(&got, &want) <= 1, "case {i} on {device}");
        // The long prompt of case 4 is cut, with a warning.
        assert_eq!(
            stderr(&out).contains("the end was cut"),
            i == 4,
            "{}",
            stderr(&out)
        );
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&out_path).unwrap(),
        ));
        let reader = decoder.read_info().unwrap();
        let text: Vec<(String, String)> = reader
            .info()
            .utf8_text
            .iter()
            .map(|t| (t.keyword.clone(), t.get_text().unwrap()))
            .collect();
        let get = |k: &str| {
            text.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("prompt").as_deref(), case["prompt"].as_str());
        assert_eq!(get("steps"), Some(steps.clone()));
        assert!(
            get("noise")
                .unwrap()
                .contains(case["noise"].as_str().unwrap())
        );
    }
}

#[test]
fn generate_with_a_seed_and_taesd() {
    let out_path = temp_png("seeded.png");
    let args = |seed: &str| {
        vec![
            "generate".to_string(),
            "--model".into(),
            fixture("sd-turbo-tiny"),
            "--decoder".into(),
            fixture("taesd"),
            "--prompt".into(),
            "a cat".into(),
            "--seed".into(),
            seed.into(),
            "--width".into(),
            "40".into(),
            "--height".into(),
            "24".into(),
            "--device".into(),
            "cpu".into(),
            "--verbose".into(),
            "--out".into(),
            out_path.display().to_string(),
        ]
    };
    let run = |seed: &str| {
        let a = args(seed);
        let out = tastebud(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("denoise"), "--verbose prints timings");
        image::open(&out_path).unwrap().to_rgb8()
    };
    let a = run("3");
    assert_eq!((a.width(), a.height()), (40, 24));
    assert_eq!(a, run("3"), "a seed is reproducible");
    assert_ne!(a, run("4"));
}

#[test]
fn generate_refuses_bad_input_by_name() {
    let out_path = temp_png("bad.png").display().to_string();
    let model = fixture("sd-turbo-tiny");
    let noise = fixture("noise1.npy");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--width", "44"],
            "width: 44 pixels: must be a positive multiple of 8",
        ),
        (vec!["--steps", "9"], "steps: 9"),
        // Once an abort ("memory allocation of 250000000004 bytes failed").
        (
            vec!["--width", "1000000", "--height", "1000000"],
            "height: 1000000 pixels: the longest side Tastebud generates is 8192",
        ),
        (
            vec!["--width", "8192", "--height", "8192"],
            "8192x8192 is 67108864 pixels, over the budget of 16777216",
        ),
        (
            vec!["--noise", &noise, "--width", "64"],
            "noise: shape [1, 4, 6, 5]",
        ),
        (
            vec!["--noise", "/nonexistent.npy"],
            "reading noise /nonexistent.npy",
        ),
        (vec!["--device", "tpu"], "tpu"),
    ];
    for (extra, named) in cases {
        let mut args = vec![
            "generate", "--model", &model, "--prompt", "a cat", "--out", &out_path,
        ];
        args.extend(extra);
        let out = tastebud(&args);
        assert!(!out.status.success(), "{named}");
        assert!(stderr(&out).contains(named), "{named}: {}", stderr(&out));
    }
    let out = tastebud(&[
        "generate",
        "--model",
        &fixture("taesd"),
        "--prompt",
        "a",
        "--out",
        &out_path,
    ]);
    assert!(
        stderr(&out).contains("not a diffusers snapshot (no model_index.json)"),
        "{}",
        stderr(&out)
    );
}

/// `optimize` runs the reference ReNO loop of tests/reference/make_reno_fixtures.py: the same
/// per-iteration CLIP scores and best noise; the PNG is what `generate` makes from that noise.
#[test]
fn optimize_follows_the_reference_loop_and_saves_its_best() {
    let noise_path = temp_png("reno-best.npy");
    let out_path = temp_png("reno-best.png");
    let reference = fixture("reno/reference.safetensors");
    let clip = format!("clip={}:0.1", fixture("clip-openai"));
    let aesthetic = format!(
        "aesthetic={},{}:1.0",
        fixture("rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth"),
        fixture("clip-openai")
    );
    let out = tastebud(&[
        "optimize",
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a photo of a cat",
        "--reward",
        &clip,
        "--reward",
        &aesthetic,
        "--noise",
        &reference,
        "--iters",
        "10",
        "--grad-clip",
        "0.025",
        "--device",
        "cpu",
        "--json",
        "--out",
        &out_path.display().to_string(),
        "--save-noise",
        &noise_path.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let clip_scores: Vec<f32> = json["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["rewards"][0].as_f64().unwrap() as f32)
        .collect();
    let (want, _) = reference_tensor_in("reno/reference.safetensors", "sgd.clip");
    assert_close("optimize clip trajectory", &clip_scores, &want, 1e-3);
    assert_eq!(json["best_iteration"], 9);
    assert_eq!(json["labels"], serde_json::json!(["clip", "aesthetic"]));

    let saved = std::fs::read(&noise_path).unwrap();
    let saved = tastebud_core::noise::Noise::from_bytes("best.npy", &saved).unwrap();
    assert_eq!(saved.shape, vec![1, 4, 6, 5]);
    let (best, _) = reference_tensor_in("reno/reference.safetensors", "sgd.best_noise");
    assert_close("saved best noise", &saved.values, &best, 1e-3);

    let noise_arg = noise_path.display().to_string();
    let again = generated_pixels(&[
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a photo of a cat",
        "--noise",
        &noise_arg,
    ]);
    // Within one level, not equal: `optimize` redraws its best on the autodiff device (burn's
    // convolution) and `generate` on plain flex (models/cpu_conv.rs), whose sums round apart.
    let saved = png_pixels(&out_path);
    assert_eq!(saved.len(), again.len());
    assert!(
        max_pixel_diff(&saved, &again) <= 1,
        "saved picture vs generate --noise"
    );
}

#[test]
fn optimize_refuses_what_it_cannot_do() {
    let out_path = temp_png("refused.png").display().to_string();
    let model = fixture("sd-turbo-tiny");
    let clip = format!("clip={}", fixture("clip-openai"));
    let run = |reward: &str, extra: &[&str]| {
        let mut args = vec![
            "optimize", "--model", &model, "--prompt", "a cat", "--reward", reward, "--device",
            "cpu", "--out", &out_path,
        ];
        args.extend_from_slice(extra);
        let out = tastebud(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        stderr(&out)
    };
    assert!(run(&clip, &["--method", "best-of-n", "--budget", "1"]).contains("needs at least"));
    assert!(run(&clip, &["--method", "carinox", "--budget", "5"]).contains("needs at least"));
    assert!(run(&clip, &["--method", "annealing"]).contains("annealing"));
    assert!(run(&clip, &["--method", "pruned"]).contains("--proxy-decoder"));
    assert!(run(&clip, &["--iters", "0"]).contains("iterations"));
    assert!(run(&clip, &["--lr=-1"]).contains("lr"));
    assert!(run(&clip, &["--width", "44"]).contains("multiple of 8"));
    assert!(run(&clip, &["--save-noise", "x.txt"]).contains(".npy"));
    let zero = format!("clip={}:0", fixture("clip-openai"));
    assert!(run(&zero, &[]).contains("every reward weight is 0"));
}

/// Best-of-N scores seeds `seed..seed + budget` in batches and writes the best: the PNG is what
/// `generate --seed` makes from the winning seed.
#[test]
fn optimize_best_of_n_keeps_the_best_seed() {
    let out_path = temp_png("best-of-n.png");
    let clip = format!("clip={}", fixture("clip-openai"));
    let model = fixture("sd-turbo-tiny");
    let out = tastebud(&[
        "optimize",
        "--model",
        &model,
        "--prompt",
        "a cat",
        "--reward",
        &clip,
        "--method",
        "best-of-n",
        "--budget",
        "3",
        "--batch",
        "2",
        "--seed",
        "20",
        "--width",
        "40",
        "--height",
        "48",
        "--device",
        "cpu",
        "--json",
        "--out",
        &out_path.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(json["spent"], 3.0);
    let best = steps
        .iter()
        .min_by(|a, b| {
            a["reward_loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["reward_loss"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(json["best"], best["origin"]);
    let seed = best["origin"]
        .as_str()
        .unwrap()
        .trim_start_matches("seed ")
        .to_string();
    let again = generated_pixels(&[
        "--model", &model, "--prompt", "a cat", "--seed", &seed, "--width", "40", "--height", "48",
    ]);
    assert_eq!(png_pixels(&out_path), again);
}

fn png_pixels(path: &std::path::Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

/// The pixels `tastebud generate ARGS --device cpu` draws.
fn generated_pixels(args: &[&str]) -> Vec<u8> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = temp_png(&format!("generated-{n}.png"));
    let out_arg = out_path.display().to_string();
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--device", "cpu", "--out", &out_arg]);
    let out = tastebud(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    png_pixels(&out_path)
}

/// Ctrl-C stops `optimize` after the current iteration and still writes the best so far.
#[test]
fn ctrl_c_stops_optimize_and_keeps_the_best() {
    let dir = temp_png("ctrl-c-iterates");
    let out_path = temp_png("ctrl-c.png");
    let child = Command::new(env!("CARGO_BIN_EXE_tastebud"))
        .args([
            "optimize",
            "--model",
            &fixture("sd-turbo-tiny"),
            "--prompt",
            "a cat",
            "--reward",
            &format!("clip={}", fixture("clip-openai")),
            "--iters",
            "2000",
            "--width",
            "40",
            "--height",
            "48",
            "--device",
            "cpu",
            "--json",
            "--out",
            &out_path.display().to_string(),
            "--save-every",
            "1",
            &dir.display().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = interrupt_when(child, &dir.join("iter-002.png"));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["stopped"]
            .as_str()
            .unwrap()
            .contains("stopped by the caller"),
        "{json}"
    );
    let done = json["iterations"].as_array().unwrap().len();
    assert!((3..2000).contains(&done), "{done} iterations");
    assert!(image::open(&out_path).is_ok());
}

/// `quantize` writes a snapshot whose weights are GGUF (q8_0: every 2-D+ tensor whose rows
/// fill blocks, 3x3 convolutions along their flattened inputs), which `generate` loads like any
/// snapshot: q8_0 stays within two levels of diffusers' f32 image, q4_0 within 16 (tiny random
/// weights; the trained model's figures are in BENCHMARKS.md). Bad requests are refused.
#[test]
fn quantize_writes_gguf_snapshots_that_generate() {
    let case = &reference_json()["pipelines"][1]; // sd-turbo-tiny, 48x40
    let model = fixture(case["model"].as_str().unwrap());
    // `tastebud quantize --model <the tiny SD-Turbo> ARGS...`
    let quantize = |args: &[&str]| {
        let mut all = vec!["quantize", "--model", model.as_str()];
        all.extend_from_slice(args);
        tastebud(&all)
    };
    let (_, _, want) = fixture_png(case["image"].as_str().unwrap());
    // Measured: q8_0 1 level at most, q4_0 8 (mean 0.97).
    for (kind, bound) in [("q8_0", 2), ("q4_0", 16)] {
        let dir =
            std::env::temp_dir().join(format!("tastebud-quantize-{}-{kind}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = quantize(&["--to", kind, "--out", &dir.display().to_string(), "--json"]);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            report["bytes_after"].as_u64() < report["bytes_before"].as_u64(),
            "{report}"
        );
        assert!(dir.join("unet/diffusion_pytorch_model.gguf").is_file());
        assert!(
            !dir.join("unet/diffusion_pytorch_model.safetensors")
                .exists()
        );
        assert!(dir.join("model_index.json").is_file() && dir.join("unet/config.json").is_file());
        let tensors = report["tensors"].as_array().unwrap();
        let conv = tensors
            .iter()
            .find(|t| t["tensor"]["name"] == "up_blocks.0.resnets.0.conv1.weight") // [16, 32, 3, 3]
            .unwrap();
        assert_eq!(conv["tensor"]["stored_as"], kind, "{conv}");
        let bias = tensors
            .iter()
            .find(|t| t["tensor"]["name"] == "conv_in.bias")
            .unwrap();
        assert!(
            bias["tensor"]["kept"]
                .as_str()
                .unwrap()
                .contains("fewer than two dimensions")
        );

        let png = temp_png(&format!("quantized-{kind}.png"));
        let out = tastebud(&[
            "generate",
            "--model",
            &dir.display().to_string(),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--noise",
            &fixture(case["noise"].as_str().unwrap()),
            "--device",
            "cpu",
            "--out",
            &png.display().to_string(),
        ]);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let got = image::open(&png).unwrap().to_rgb8().into_raw();
        let diff = max_pixel_diff(&got, &want);
        assert!(
            diff <= bound,
            "{kind}: {diff} levels from diffusers' f32 image"
        );

        // Nothing is overwritten; unknown formats are named.
        let again = quantize(&["--to", kind, "--out", &dir.display().to_string()]);
        assert!(
            stderr(&again).contains("exists and is not empty"),
            "{}",
            stderr(&again)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let bad = quantize(&["--to", "q3_k", "--out", "/tmp/never"]);
    assert!(
        stderr(&bad).contains("q3_k: known types are q8_0"),
        "{}",
        stderr(&bad)
    );

    // --mix: the matched tensors (by folder/name) in another format, the rest in --to.
    let dir = std::env::temp_dir().join(format!("tastebud-quantize-mix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = quantize(&[
        "--to",
        "q4_0",
        "--mix",
        "unet/up_blocks.0=q8_0",
        "--mix",
        "text_encoder/=q5_0",
        "--out",
        &dir.display().to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = |file: &str, name: &str| {
        report["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["file"] == file && t["tensor"]["name"] == name)
            .map(|t| t["tensor"]["stored_as"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{file}: no {name} in {report}"))
    };
    let unet = "unet/diffusion_pytorch_model.gguf";
    assert_eq!(stored(unet, "up_blocks.0.resnets.0.conv1.weight"), "q8_0");
    assert_eq!(stored(unet, "up_blocks.1.resnets.0.conv1.weight"), "q4_0");
    let text = "text_encoder/model.gguf";
    assert_eq!(
        stored(text, "text_model.encoder.layers.0.self_attn.q_proj.weight"),
        "q5_0"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let bad = quantize(&["--to", "q4_0", "--mix", "unet", "--out", "/tmp/never"]);
    assert!(
        stderr(&bad).contains("--mix unet: expected PART=TYPE"),
        "{}",
        stderr(&bad)
    );
}

/// A quantized CLIP folder (`tastebud quantize --model <the shipped CLIP>`) is a reward like
/// any (it was not: the folder's `model.gguf` was never read): its score of the README
/// picture stays within 0.1 of the f16 model's (measured 0.033).
#[test]
fn a_quantized_clip_folder_scores() {
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes/clip");
    let dir = std::env::temp_dir().join(format!("tastebud-qclip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = tastebud(&[
        "quantize",
        "--model",
        &clip.display().to_string(),
        "--to",
        "q8_0",
        "--out",
        &dir.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("model.gguf").is_file());
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/shapes/examples")
        .read_dir()
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .expect("an example picture");
    let score = |folder: &std::path::Path| {
        let out = tastebud(&[
            "score",
            "--reward",
            &format!("clip={}", folder.display()),
            "--prompt",
            "a red circle to the left of a blue square",
            "--device",
            "cpu",
            "--json",
            &image.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        json["scores"][0]["rewards"]["clip"].as_f64().unwrap()
    };
    let (f16, q8) = (score(&clip), score(&dir));
    assert!((f16 - q8).abs() <= 0.1, "f16 {f16} vs q8_0 {q8}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--unet FILE`: a ComfyUI-GGUF file in the original LDM names (tests/fixtures/gguf, made by
/// tests/reference/make_ldm_gguf_fixtures.py) used with the snapshot it came from draws
/// diffusers' picture; a file of another model says which tensors do not fit.
#[test]
fn generate_takes_an_ldm_gguf_unet_file() {
    let case = &reference_json()["pipelines"][1]; // sd-turbo-tiny, 48x40
    let (_, _, want) = fixture_png(case["image"].as_str().unwrap());
    let png = temp_png("ldm-unet.png");
    let run = |unet: &str| {
        tastebud(&[
            "generate",
            "--model",
            &fixture(case["model"].as_str().unwrap()),
            "--unet",
            &fixture(unet),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--noise",
            &fixture(case["noise"].as_str().unwrap()),
            "--device",
            "cpu",
            "--out",
            &png.display().to_string(),
        ])
    };
    let out = run("gguf/sd-turbo-tiny-unet-comfy.gguf");
    assert!(out.status.success(), "{}", stderr(&out));
    let got = image::open(&png).unwrap().to_rgb8().into_raw();
    let diff = max_pixel_diff(&got, &want);
    assert!(diff <= 2, "{diff} levels from diffusers' image");

    let out = run("sdxl-turbo-tiny/unet/diffusion_pytorch_model.safetensors");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--unet")
            && err.contains("sdxl-turbo-tiny/unet/diffusion_pytorch_model.safetensors"),
        "{err}"
    );
}
