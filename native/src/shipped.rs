//! The models Tastebud ships (`models/shapes/`): the offline default of `generate`, `optimize`
//! and `score`, found in the checkout (or `$TASTEBUD_MODELS`) and checked against their
//! manifest before use, so a damaged copy is named instead of drawing noise.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tastebud_core::ModelFiles;
use tastebud_core::manifest::Manifest;

/// `$TASTEBUD_MODELS`, else the checkout's `models/` (where `cargo run` and tests find it).
pub(crate) fn models_root() -> PathBuf {
    std::env::var_os("TASTEBUD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let native = Path::new(env!("CARGO_MANIFEST_DIR"));
            native.parent().unwrap_or(native).join("models")
        })
}

pub(crate) fn shapes_dir() -> PathBuf {
    models_root().join("shapes")
}

/// A shipped model folder (`generator`, `clip` or `proxy`), said on stderr.
pub(crate) fn model(name: &str) -> Result<PathBuf> {
    let dir = shapes_dir().join(name);
    if !dir.is_dir() {
        bail!(
            "no model given, and the shipped shapes-world model is not at {} (pass --model / \
             --reward, or set TASTEBUD_MODELS to the folder that holds shapes/)",
            dir.display()
        );
    }
    eprintln!("model: the shipped shapes-world {name} ({})", dir.display());
    Ok(dir)
}

/// When `folder` is a shipped model, checks every file read from it against the manifest.
pub(crate) fn verify(folder: &Path, files: &ModelFiles) -> Result<()> {
    let (Ok(folder), Ok(root)) = (folder.canonicalize(), shapes_dir().canonicalize()) else {
        return Ok(());
    };
    let Ok(sub) = folder.strip_prefix(&root) else {
        return Ok(());
    };
    let manifest_path = root.join("manifest.json");
    let bytes = std::fs::read(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::from_json(&manifest_path.display().to_string(), &bytes)?;
    for (name, bytes) in files.iter() {
        let relative = sub.join(name).to_string_lossy().replace('\\', "/");
        manifest.check(&relative, &files.label(name), bytes)?;
    }
    Ok(())
}
