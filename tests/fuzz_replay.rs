//! Replays every fuzz input kept in the repository (`tests/fuzz/corpus/TARGET/` and the
//! crashes, hangs and over-allocations found and fixed, `tests/fuzz/findings/TARGET/`) through
//! the same code the fuzz binaries run, under the same memory budget (tests/fuzz/budget.rs
//! aborts past it), on the stable toolchain. The long fuzzing runs are `tests/fuzz/run.sh`.

#[path = "fuzz/budget.rs"]
mod budget;
#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn inputs(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

#[test]
fn every_corpus_input_and_finding_loads_or_fails_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz");
    let mut peak_by_target = Vec::new();
    for (name, run) in targets::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz target {name} has no seed corpus in tests/fuzz/corpus/{name}"
        );
        let findings = inputs(&root.join("findings").join(name));
        let mut peak = 0;
        for file in corpus.iter().chain(&findings) {
            let bytes = std::fs::read(file).expect("reading a committed fuzz input");
            // Named first: an input over the budget aborts the process.
            eprintln!("{name}: {}", file.display());
            budget::reset_peak();
            run(&bytes);
            peak = peak.max(budget::peak());
        }
        peak_by_target.push((name, corpus.len(), findings.len(), peak));
    }
    for (name, corpus, findings, peak) in &peak_by_target {
        eprintln!("{name}: {corpus} corpus inputs, {findings} findings, peak heap {peak} bytes");
    }
}
