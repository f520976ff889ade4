//! Helpers shared by the command-line tests: running the `tastebud` binary, its stderr, and a
//! per-test-process temporary folder.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn tastebud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tastebud"))
        .args(args)
        .output()
        .expect("run tastebud")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `name` inside a temporary folder of this test process, named after `suite`.
pub fn temp_in(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tastebud-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    dir.join(name)
}

/// Sends Ctrl-C (SIGINT) to a running `tastebud` once `path` exists (within two minutes), and
/// returns what it printed when it ended.
pub fn interrupt_when(child: std::process::Child, path: &std::path::Path) -> Output {
    let started = std::time::Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    child.wait_with_output().expect("wait for tastebud")
}
