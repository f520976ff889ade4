//! Faults the CLI survives without losing a file: a kill (SIGKILL, Ctrl-C's SIGINT) at any
//! moment of a run leaves each output as it was or as the finished run writes it, never torn;
//! a write that fails for lack of space (here: the file-size limit, `ulimit -f`, which fails
//! writes as a full disk does) names the file, keeps the old one and leaves no temporary file;
//! a personal head whose save was cut between its two files still loads as one whole head.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tastebud")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tastebud-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `command` (generate or optimize) drawing "a red circle" on the CPU into `out`.
fn draw<'a>(command: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        command,
        "--prompt",
        "a red circle",
        "--device",
        "cpu",
        "--out",
        out,
    ]
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run tastebud");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `args` to the end once (its duration and the bytes it writes to `target`), then
/// again and again, killed with `signal` at moments spread over that duration (the earliest
/// at 0), each time checking that `target` holds `old` or the finished bytes.
fn kill_at_every_moment(args: &[&str], target: &Path, old: &[u8], signal: &str) {
    std::fs::write(target, old).unwrap();
    let start = Instant::now();
    run(args);
    let full = start.elapsed();
    let new = std::fs::read(target).unwrap();
    assert_ne!(new, old, "the run changes {}", target.display());
    let tries = 16;
    // Moments spread over the measured run, the last ones past its end; then, should every
    // kill so far have landed before the write (a run slowed down by the other tests running
    // beside it), moments twice, four times ... as late, so a kill also lands after it.
    let spread = (0..tries).map(|k| full.mul_f64(k as f64 / (tries - 2) as f64));
    let later = (1..=5).map(|j| full * (1u32 << j));
    let (mut saw_old, mut saw_new) = (0, 0);
    for (k, moment) in spread.chain(later).enumerate() {
        if k >= tries && saw_new > 0 {
            break;
        }
        std::fs::write(target, old).unwrap();
        let mut command = Command::new(bin());
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A shell that starts jobs in the background hands them SIGINT ignored (and ignored
        // signals survive exec): give the CLI the default Ctrl-C a terminal user's has.
        // SAFETY: `signal` is async-signal-safe, as `pre_exec` requires.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        std::thread::sleep(moment);
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let _ = child.wait();
        let now = std::fs::read(target).unwrap();
        assert!(
            now == old || now == new,
            "{}: killed ({signal}) after {moment:?}, {} bytes are neither the old file ({} \
             bytes) nor the finished one ({} bytes)",
            target.display(),
            now.len(),
            old.len(),
            new.len()
        );
        saw_old += usize::from(now == old);
        saw_new += usize::from(now == new);
    }
    // Both outcomes were met: the kills did land before and after the write.
    assert!(
        saw_old > 0 && saw_new > 0,
        "{saw_old} kills kept the old file, {saw_new} found the finished one (the run took \
         {full:?} alone)"
    );
}

#[test]
fn a_killed_generate_leaves_the_old_picture_or_the_new_one() {
    let dir = temp_dir("generate");
    let out = dir.join("picture.png");
    let old = std::fs::read(fixtures().join("shapes/image0.png")).unwrap();
    let args = [
        "generate",
        "--prompt",
        "a red circle",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    kill_at_every_moment(&args, &out, &old, "-KILL");
    kill_at_every_moment(&args, &out, &old, "-INT");
}

#[test]
fn a_killed_preference_import_leaves_the_old_file_or_the_merged_one() {
    let dir = temp_dir("prefs");
    let prefs = dir.join("mine.json");
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("personal/pairs.json")).unwrap())
            .unwrap();
    let mut first = all.clone();
    first["records"].as_array_mut().unwrap().truncate(2);
    let old = serde_json::to_vec(&first).unwrap();
    let other = fixtures().join("personal/pairs.json");
    let args = [
        "personalize",
        "import",
        "--prefs",
        prefs.to_str().unwrap(),
        other.to_str().unwrap(),
    ];
    kill_at_every_moment(&args, &prefs, &old, "-KILL");
}

/// `sh -c` with SIGXFSZ ignored (so a write past the limit fails with EFBIG instead of
/// killing the process) and at most `blocks` 512-byte blocks per file written.
fn with_file_limit(blocks: u32, args: &[&str]) -> Output {
    let mut script = format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\"");
    for i in 1..=args.len() {
        script.push_str(&format!(" \"${i}\""));
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin())
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn a_write_that_runs_out_of_space_keeps_the_old_file_and_names_it() {
    let dir = temp_dir("full");
    let out = dir.join("picture.png");
    let old = b"the previous picture".to_vec();
    std::fs::write(&out, &old).unwrap();
    let result = with_file_limit(1, &draw("generate", out.to_str().unwrap()));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains(out.to_str().unwrap()), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), old);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("picture.png")],
        "{left:?}"
    );
}

#[test]
fn a_head_save_cut_between_its_two_files_loads_as_one_whole_head() {
    let dir = temp_dir("head");
    let prefs = fixtures().join("personal/pairs.json");
    let fit = |kind: &str, out: &Path| {
        run(&[
            "personalize",
            "fit",
            "--prefs",
            prefs.to_str().unwrap(),
            "--head",
            kind,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (linear, mlp, torn) = (dir.join("linear"), dir.join("mlp"), dir.join("torn"));
    fit("linear", &linear);
    fit("mlp", &mlp);
    // The old head was linear; the new one (an MLP) got as far as its weights file.
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::copy(linear.join("head.json"), torn.join("head.json")).unwrap();
    std::fs::copy(mlp.join("head.safetensors"), torn.join("head.safetensors")).unwrap();
    let probes = dir.join("probes.json");
    let rows: Vec<Vec<f32>> = (0..4)
        .map(|i| (0..8).map(|j| ((i * 8 + j) as f32 * 0.37).sin()).collect())
        .collect();
    std::fs::write(&probes, serde_json::to_vec(&rows).unwrap()).unwrap();
    let rank = |head: &Path| {
        let out = run(&[
            "personalize",
            "rank",
            "--head",
            head.to_str().unwrap(),
            probes.to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(rank(&torn), rank(&mlp));
    assert_ne!(rank(&linear), rank(&mlp));
}

#[test]
fn counts_past_their_limits_are_refused_before_anything_is_allocated() {
    let dir = temp_dir("counts");
    let out = dir.join("x.png");
    let optimize = |extra: &[&str]| {
        let mut args = draw("optimize", out.to_str().unwrap());
        args.extend_from_slice(extra);
        let result = Command::new(bin()).args(&args).output().unwrap();
        assert!(!result.status.success(), "{extra:?}");
        String::from_utf8_lossy(&result.stderr).to_string()
    };
    let err = optimize(&["--iters", "100000000000000"]);
    assert!(
        err.contains("iterations") && err.contains("100000"),
        "{err}"
    );
    let err = optimize(&["--method", "best-of-n", "--budget", "1e12"]);
    assert!(err.contains("budget") && err.contains("100000"), "{err}");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a red circle\"}\n").unwrap();
    let result = Command::new(bin())
        .args([
            "generate",
            "--device",
            "cpu",
            "--prompts",
            prompts.to_str().unwrap(),
        ])
        .args(["--out-dir", dir.join("batch").to_str().unwrap()])
        .args(["--seeds-per-prompt", "10000000000000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success() && err.contains("100000"), "{err}");
    assert!(!out.exists());
}
