//! Batch runs from the command line (`generate` / `optimize` with `--prompts FILE --out-dir DIR`):
//! one PNG and record per (prompt, seed), shards that together make exactly the unsharded run,
//! resuming after Ctrl-C to the same results, and bad prompt files, shards and folders refused.

mod cli_common;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cli_common::*;
use common::*;
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    temp_in("batch", name)
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn prompt_file(name: &str, text: &str) -> String {
    let path = temp(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Every file of a folder but the run settings: name -> bytes (records without their timings,
/// which differ from run to run).
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if name.ends_with(".json") {
                let mut record: Value = serde_json::from_slice(&bytes).unwrap();
                assert!(record["ms"].as_f64().unwrap() > 0.0, "{record}");
                record["ms"] = Value::Null;
                bytes = serde_json::to_vec(&record).unwrap();
            }
            (name, bytes)
        })
        .collect()
}

const PROMPTS: &str = "{\"prompt\": \"a photo of a cat\", \"tag\": \"single_object\"}\n\
                       \n\
                       {\"prompt\": \"a dog\", \"seeds\": [7, 9]}\n";

/// The tiny fixture model, small and on the CPU.
const TINY: [&str; 6] = ["--device", "cpu", "--width", "32", "--height", "32"];

/// `generate` with the tiny fixture model, and `rest`.
fn generate_tiny(rest: &[&str]) -> Output {
    let model = fixture("sd-turbo-tiny");
    let mut args = vec!["generate", "--model", &model];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(rest);
    tastebud(&args)
}

fn generate(prompts: &str, dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.display().to_string();
    let mut args = vec![
        "--prompts",
        prompts,
        "--seeds-per-prompt",
        "2",
        "--out-dir",
        &dir,
    ];
    args.extend_from_slice(extra);
    generate_tiny(&args)
}

#[test]
fn a_prompt_file_makes_one_image_and_record_per_seed_and_shards_add_up() {
    let prompts = prompt_file("prompts.jsonl", PROMPTS);
    let whole = temp("whole");
    let out = generate(&prompts, &whole, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = contents(&whole);
    let names: Vec<&str> = files.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "00001-0.json",
            "00001-0.png",
            "00001-1.json",
            "00001-1.png",
            "00003-7.json",
            "00003-7.png",
            "00003-9.json",
            "00003-9.png"
        ]
    );
    let record: Value = serde_json::from_slice(&files["00001-1.json"]).unwrap();
    assert_eq!(record["prompt"], "a photo of a cat");
    assert_eq!(record["seed"], 1);
    assert_eq!(record["line"], 1);
    assert_eq!(record["tag"], "single_object");
    assert_eq!(record["image"], "00001-1.png");
    assert_eq!(record["steps"], 1);
    // The image is the one `generate` makes for that prompt and seed.
    let single = temp("single.png");
    let single_path = single.display().to_string();
    let out = generate_tiny(&["--prompt", "a dog", "--seed", "9", "--out", &single_path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pixels = |bytes: &[u8]| image_pixels(bytes);
    assert_eq!(
        pixels(&std::fs::read(&single).unwrap()),
        pixels(&files["00003-9.png"])
    );

    // Run again: everything is there, nothing is made or changed.
    let out = generate(&prompts, &whole, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4 of 4 images already in"),
        "{}",
        stderr(&out)
    );
    assert_eq!(contents(&whole), files);

    // Three shards into one folder make exactly the same files.
    let sharded = temp("sharded");
    for i in 0..3 {
        let out = generate(&prompts, &sharded, &["--shard", &format!("{i}/3")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(contents(&sharded), files);
}

fn image_pixels(png: &[u8]) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn bad_prompt_files_shards_and_folders_are_refused_before_anything_runs() {
    let run = |text: &str, name: &str, extra: &[&str]| {
        let prompts = prompt_file(&format!("{name}.jsonl"), text);
        let dir = temp(name);
        let out = generate(&prompts, &dir, extra);
        assert!(!out.status.success(), "{name} succeeded");
        let made = dir.exists() && !contents(&dir).is_empty();
        (stderr(&out), made)
    };
    let (err, made) = run(
        "{\"prompt\": \"a cat\"}\n{\"prompt\": 3}\n",
        "bad-line",
        &[],
    );
    assert!(
        err.contains("bad-line.jsonl line 2: needs a non-empty \"prompt\""),
        "{err}"
    );
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!made);
    let (err, made) = run("{\"prompt\": \"a cat\"}\n", "shard", &["--shard", "3/3"]);
    assert!(
        err.contains("--shard 3/3: expected I/N with 0 <= I < N"),
        "{err}"
    );
    assert!(!made);
    let (err, _) = run("{\"prompt\": \"a cat\"}\n", "both", &["--prompt", "a dog"]);
    assert!(err.contains("--prompt"), "{err}");

    // A folder made with other settings is not mixed into.
    let prompts = prompt_file("settings.jsonl", "{\"prompt\": \"a cat\"}\n");
    let dir = temp("settings");
    let out = generate(&prompts, &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = contents(&dir);
    let out = generate(&prompts, &dir, &["--steps", "2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("holds images made with other settings (steps: 1 -> 2)"),
        "{err}"
    );
    assert_eq!(contents(&dir), before);
}

fn optimize(prompts: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tastebud"));
    let (model, reward) = (fixture("sd-turbo-tiny"), fixture("clip-openai"));
    cmd.args([
        "optimize",
        "--model",
        &model,
        "--reward",
        &format!("clip={reward}"),
    ])
    .args(TINY)
    .args(["--iters", "4", "--prompts", prompts, "--out-dir"])
    .arg(dir);
    cmd
}

/// Ctrl-C stops a batch after the image in progress (not written if cut short); running the
/// command again finishes it with exactly the images and scores of an uninterrupted run.
#[test]
fn an_interrupted_optimize_batch_resumes_to_the_uninterrupted_result() {
    let prompts = prompt_file(
        "optimize.jsonl",
        &"{\"prompt\": \"a photo of a cat\", \"seeds\": [0, 1, 2]}\n".repeat(3),
    );
    let whole = temp("optimize-whole");
    let out = optimize(&prompts, &whole).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let files = contents(&whole);
    assert_eq!(files.len(), 18);
    let record: Value = serde_json::from_slice(&files["00002-1.json"]).unwrap();
    assert_eq!(record["method"], "reno");
    assert_eq!(record["count"], 4);
    let (start, best) = (
        &record["start_scores"]["loss"],
        &record["best_scores"]["loss"],
    );
    assert!(
        best.as_f64().unwrap() <= start.as_f64().unwrap(),
        "{record}"
    );

    let cut = temp("optimize-cut");
    let child = optimize(&prompts, &cut)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once the first image is written.
    let out = interrupt_when(child, &cut.join("00001-0.json"));
    let err = stderr(&out);
    if !out.status.success() {
        assert!(
            err.contains("run the same command again to resume"),
            "{err}"
        );
        assert!(contents(&cut).len() < 18);
    }
    let out = optimize(&prompts, &cut).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(contents(&cut), files);
}
