//! `tastebud personalize` end to end, and the CLI's precision and memory flags: a head fitted
//! from a preference file ranks like the PyTorch reference; preference files are recorded from
//! images, merged without loss, and refused by name when bad; a VPL base picks the next pair; a
//! fitted head steers `optimize` as the `personal` reward; `--dtype f16` runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn tastebud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tastebud"))
        .args(args)
        .output()
        .expect("run tastebud")
}

fn ok(args: &[&str]) -> Output {
    let out = tastebud(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// `personalize fit` of a `kind` head on `prefs` (on `base`) into `out`.
fn fit(prefs: &str, kind: &str, base: Option<&str>, out: &str) -> Output {
    let mut args = vec![
        "personalize",
        "fit",
        "--prefs",
        prefs,
        "--head",
        kind,
        "--out",
        out,
    ];
    args.extend(base.iter().flat_map(|b| ["--base", *b]));
    tastebud(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn fixture(path: &str) -> String {
    fixtures().join(path).display().to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tastebud-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python-made preference file, with only `users`' records.
fn prefs_of(dir: &Path, name: &str, users: &[&str]) -> String {
    let mut store: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("personal/pairs.json")).unwrap())
            .unwrap();
    store["records"]
        .as_array_mut()
        .unwrap()
        .retain(|r| users.contains(&r["user"].as_str().unwrap()));
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    path.display().to_string()
}

fn probes(dir: &Path) -> String {
    let (flat, _) = reference_tensor_in("personal/reference.safetensors", "probes");
    let rows: Vec<&[f32]> = flat.chunks(8).collect();
    let path = dir.join("probes.json");
    std::fs::write(&path, serde_json::to_vec(&rows).unwrap()).unwrap();
    path.display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn fit_and_rank_match_the_reference() {
    let dir = temp_dir("fit");
    let prefs = prefs_of(&dir, "person0.json", &["person-0"]);
    let head = s(&dir.join("head"));
    let out = ok(&[
        "personalize",
        "fit",
        "--prefs",
        &prefs,
        "--head",
        "linear",
        "--out",
        &head,
        "--steps",
        "50",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["head"]["kind"], "linear");
    assert_eq!(report["summary"]["ties"], 1);
    let out = ok(&[
        "personalize",
        "rank",
        "--head",
        &head,
        "--json",
        &probes(&dir),
    ]);
    let ranking: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = reference_tensor_in("personal/reference.safetensors", "linear.scores").0;
    let rows = ranking["ranking"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for (k, row) in rows.iter().enumerate() {
        let i: usize = row["image"]
            .as_str()
            .unwrap()
            .rsplit('#')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let score = row["score"].as_f64().unwrap() as f32;
        assert_close(&format!("candidate {i}"), &[score], &[want[i]], 1e-4);
        if k > 0 {
            assert!(
                rows[k - 1]["score"].as_f64() >= row["score"].as_f64(),
                "sorted"
            );
        }
    }
}

#[test]
fn import_merges_and_a_bad_file_changes_nothing() {
    let dir = temp_dir("import");
    let target = dir.join("mine.json");
    let a = prefs_of(&dir, "a.json", &["person-0"]);
    let b = prefs_of(&dir, "b.json", &["person-1"]);
    ok(&["personalize", "import", "--prefs", &s(&target), &a, &b]);
    let before = std::fs::read(&target).unwrap();
    let merged: Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(merged["records"].as_array().unwrap().len(), 20);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, br#"{"format":"tastebud-preferences","version":1,"records":[{"prompt":"p","a":{"embedding":[1,2]},"b":{"embedding":[1,2]},"choice":"a","timestamp":0}]}"#).unwrap();
    let out = tastebud(&["personalize", "import", "--prefs", &s(&target), &s(&bad)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dimension 2"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "a failed import must not touch the file"
    );
    let out = tastebud(&[
        "personalize",
        "fit",
        "--prefs",
        &s(&dir.join("missing.json")),
        "--head",
        "linear",
        "--out",
        &s(&dir.join("h")),
    ]);
    assert!(stderr(&out).contains("missing.json"), "{}", stderr(&out));
}

#[test]
fn a_vpl_base_picks_the_next_pair() {
    let dir = temp_dir("next");
    let everyone = fixture("personal/pairs.json");
    let base = s(&dir.join("base"));
    ok(&[
        "personalize",
        "pretrain",
        "--prefs",
        &everyone,
        "--head",
        "vpl",
        "--latent",
        "3",
        "--steps",
        "40",
        "--out",
        &base,
    ]);
    let mine = prefs_of(&dir, "person2.json", &["person-2"]);
    let next_by = |head: &str| -> Value {
        let out = ok(&[
            "personalize",
            "next",
            "--prefs",
            &mine,
            "--head",
            head,
            "--candidates",
            &probes(&dir),
            "--json",
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let next = next_by(&base);
    assert_ne!(next["a"], next["b"]);
    assert!(next["information"].as_f64().unwrap() >= 0.0);
    // A linear head asks by its Laplace posterior; an MLP head knows no uncertainty.
    for (kind, works) in [("linear", true), ("mlp", false)] {
        let head = s(&dir.join(kind));
        ok(&[
            "personalize",
            "fit",
            "--prefs",
            &mine,
            "--head",
            kind,
            "--out",
            &head,
        ]);
        let out = tastebud(&[
            "personalize",
            "next",
            "--prefs",
            &mine,
            "--head",
            &head,
            "--candidates",
            &probes(&dir),
            "--json",
        ]);
        assert_eq!(out.status.success(), works, "{kind}: {}", stderr(&out));
        if !works {
            assert!(
                stderr(&out).contains("no uncertainty to ask by"),
                "{}",
                stderr(&out)
            );
        }
    }
    // PAL from the same population, then a person's mixture on it.
    let pal = s(&dir.join("pal"));
    ok(&[
        "personalize",
        "pretrain",
        "--prefs",
        &everyone,
        "--head",
        "pal",
        "--prototypes",
        "2",
        "--steps",
        "40",
        "--out",
        &pal,
    ]);
    let out = fit(&mine, "pal", Some(&pal), &s(&dir.join("mine")));
    assert!(out.status.success(), "{}", stderr(&out));
    // A linear prior from the same population; a person's linear head on it, which the answers
    // move and which still asks by its posterior.
    // (`--prior auto` with too few people to hold a fifth out: one by one.)
    let pretrain = |method: &str, out: &str| {
        tastebud(&[
            "personalize",
            "pretrain",
            "--prefs",
            &everyone,
            "--head",
            "linear",
            "--rank",
            "1",
            "--prior",
            method,
            "--out",
            out,
        ])
    };
    let prior = s(&dir.join("prior"));
    let out = pretrain("auto", &prior);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("linear base (prior of rank 1)"));
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("prior/head.json")).unwrap()).unwrap();
    assert_eq!(config["rank"], 1);
    // The joint fit asked for by name moves the mean away from the one-by-one prior's; an
    // unknown method is named.
    let joint = s(&dir.join("joint"));
    assert!(pretrain("joint", &joint).status.success());
    let weights = |dir: &str| std::fs::read(Path::new(dir).join("head.safetensors")).unwrap();
    assert_ne!(weights(&joint), weights(&prior));
    let out = pretrain("pca", &s(&dir.join("pca")));
    assert!(stderr(&out).contains("--prior"), "{}", stderr(&out));
    let on_prior = s(&dir.join("on-prior"));
    let out = fit(&mine, "linear", Some(&prior), &on_prior);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(next_by(&on_prior)["information"].as_f64().unwrap() >= 0.0);
    let rank = |head: &str| {
        let out = ok(&[
            "personalize",
            "rank",
            "--head",
            head,
            &probes(&dir),
            "--json",
        ]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_ne!(rank(&prior), rank(&on_prior), "the answers moved the head");
    // An MLP takes no base.
    let out = fit(&mine, "mlp", Some(&prior), &s(&dir.join("mlp-on-prior")));
    assert!(stderr(&out).contains("takes no base"), "{}", stderr(&out));
}

/// Images recorded with a CLIP, a head fitted on them, then the `personal` reward in ReNO.
#[test]
fn recorded_choices_steer_optimize() {
    let dir = temp_dir("steer");
    let prefs = s(&dir.join("prefs.json"));
    let clip = fixture("clip-openai");
    for (a, b, choice) in [
        ("image0.png", "image1.png", "a"),
        ("image1.png", "image0.png", "b"),
    ] {
        ok(&[
            "personalize",
            "record",
            "--prefs",
            &prefs,
            "--prompt",
            "a photo of a cat",
            "--a",
            &fixture(a),
            "--b",
            &fixture(b),
            "--choice",
            choice,
            "--clip",
            &clip,
            "--device",
            "cpu",
        ]);
    }
    let store: Value = serde_json::from_slice(&std::fs::read(&prefs).unwrap()).unwrap();
    let records = store["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["a"]["embedding"].as_array().unwrap().len(), 16);
    assert_eq!(records[0]["prompt_embedding"].as_array().unwrap().len(), 16);
    let head = s(&dir.join("head"));
    ok(&[
        "personalize",
        "fit",
        "--prefs",
        &prefs,
        "--head",
        "linear",
        "--context",
        "--out",
        &head,
    ]);
    let out = ok(&[
        "personalize",
        "rank",
        "--head",
        &head,
        "--clip",
        &clip,
        "--prompt",
        "a photo of a cat",
        "--device",
        "cpu",
        "--json",
        &fixture("image0.png"),
        &fixture("image1.png"),
    ]);
    let ranking: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ranking["ranking"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with("image0.png"),
        "{ranking}"
    );
    let out = ok(&[
        "optimize",
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a photo of a cat",
        "--reward",
        &format!("personal={head},{clip}"),
        "--iters",
        "3",
        "--width",
        "40",
        "--height",
        "48",
        "--device",
        "cpu",
        "--json",
        "--out",
        &s(&dir.join("best.png")),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["labels"][0], "personal");
    assert_eq!(report["iterations"].as_array().unwrap().len(), 3);
    // A head for other embeddings than the CLIP's is refused by name.
    let other = s(&dir.join("other"));
    ok(&[
        "personalize",
        "fit",
        "--prefs",
        &prefs_of(&dir, "p0.json", &["person-0"]),
        "--head",
        "linear",
        "--out",
        &other,
    ]);
    let out = tastebud(&[
        "optimize",
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a cat",
        "--reward",
        &format!("personal={other},{clip}"),
        "--iters",
        "2",
        "--device",
        "cpu",
        "--out",
        &s(&dir.join("x.png")),
    ]);
    assert!(
        stderr(&out).contains("8-dimensional embeddings, this CLIP makes 16"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_reports_every_head_on_simulated_people() {
    let out = ok(&[
        "personalize",
        "bench",
        "--users",
        "1",
        "--dimension",
        "16",
        "--population",
        "6",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 3 kinds of people x 5 heads x random/active x 5 answer counts.
    assert_accuracies(&report, 150);
    for head in ["linear", "linear+prior", "mlp", "pal", "vpl"] {
        assert!(report["fit_100_pairs_ms"][head].as_f64().unwrap() > 0.0);
    }
}

/// A bench report has `rows` rows, each an accuracy in [0, 1].
fn assert_accuracies(report: &Value, rows: usize) {
    let all = report["rows"].as_array().unwrap();
    assert_eq!(all.len(), rows);
    for r in all {
        let a = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{r}");
    }
}

#[test]
fn bench_prior_reports_every_head_and_the_chosen_rank() {
    let out = ok(&[
        "personalize",
        "bench-prior",
        "--users",
        "1",
        "--dimension",
        "16",
        "--attributes",
        "8",
        "--population",
        "10",
        "--pairs",
        "12",
        "--rank",
        "2",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 5 heads x 5/20/50 answers.
    assert_accuracies(&report, 15);
    // A simulation with nothing in it is refused by name.
    for flag in ["--dimension", "--attributes", "--pairs"] {
        let out = tastebud(&["personalize", "bench-prior", flag, "0"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
    // Ten people leave too few to hold out a fifth of: the one-by-one prior at the rank asked.
    assert_eq!(
        (report["method"].as_str(), report["rank"].as_u64()),
        (Some("heads"), Some(2))
    );
}

#[test]
fn dtype_f16_generates_and_bad_dtypes_are_named() {
    let dir = temp_dir("f16");
    let out = ok(&[
        "generate",
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a photo of a cat",
        "--seed",
        "1",
        "--width",
        "40",
        "--height",
        "48",
        "--device",
        "cpu",
        "--dtype",
        "f16",
        "--out",
        &s(&dir.join("f16.png")),
    ]);
    assert!(
        stderr(&out).contains("device: flex (CPU) f16"),
        "{}",
        stderr(&out)
    );
    let out = tastebud(&[
        "generate",
        "--model",
        &fixture("sd-turbo-tiny"),
        "--prompt",
        "a cat",
        "--dtype",
        "f64",
        "--out",
        &s(&dir.join("x.png")),
    ]);
    assert!(
        stderr(&out).contains("--dtype: `f64` is not one of f32, f16"),
        "{}",
        stderr(&out)
    );
}
