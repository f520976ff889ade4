//! Manifests of shipped models (`models/<name>/manifest.json`): every file with its size and
//! sha256, so a damaged or truncated copy is named before it is loaded.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// Path relative to the manifest's folder.
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Manifest {
    pub files: Vec<ManifestFile>,
    /// What the training run measured (free-form), reported as is.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The most files a manifest may list (the shipped one lists 21).
pub const MAX_FILES: usize = 10_000;

/// Whether `path` stays inside the manifest's folder: relative, `/`-separated, made of plain
/// names (no `..`, `.`, empty parts, backslashes, drive letters or URL schemes), so neither the
/// CLI nor the browser (which joins it to the model's URL) can be led outside the folder.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.contains(['\\', ':', '?', '#', '%', '\0'])
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

impl Manifest {
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.files.len() > MAX_FILES {
            return Err(bad(format!(
                "{} files listed, over the limit of {MAX_FILES}",
                manifest.files.len()
            )));
        }
        if let Some(entry) = manifest.files.iter().find(|f| !is_plain_relative(&f.file)) {
            return Err(bad(format!(
                "file {:?} is not a plain path inside the model's folder (no `..`, `/` at the \
                 start, `\\`, `:`, `?`, `#` or `%`)",
                entry.file
            )));
        }
        if let Some(entry) = manifest
            .files
            .iter()
            .find(|f| f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad(format!(
                "file {:?}: sha256 {:?} is not 64 hex digits",
                entry.file, entry.sha256
            )));
        }
        Ok(manifest)
    }

    /// The files under `folder/` (a prefix such as `generator/`), relative to it.
    pub fn files_under<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a ManifestFile> {
        self.files
            .iter()
            .filter(move |f| f.file.starts_with(folder))
    }

    /// Checks a file's bytes against its entry; `label` names it in errors.
    pub fn check(&self, file: &str, label: &str, bytes: &[u8]) -> Result<()> {
        let damaged = |reason: String| Error::Damaged {
            file: label.to_string(),
            reason,
        };
        let entry = self
            .files
            .iter()
            .find(|f| f.file == file)
            .ok_or_else(|| damaged("not listed in the manifest".into()))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(damaged(format!(
                "{} bytes, the manifest records {}",
                bytes.len(),
                entry.bytes
            )));
        }
        let got = sha256_hex(bytes);
        if got != entry.sha256 {
            return Err(damaged(format!(
                "sha256 {got}, the manifest records {}",
                entry.sha256
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_model_folder_are_refused_by_name() {
        let entry = |file: &str| {
            format!(
                r#"{{"files": [{{"file": {file:?}, "bytes": 1, "sha256": "{}"}}]}}"#,
                "ab".repeat(32)
            )
        };
        assert!(
            Manifest::from_json("m.json", entry("generator/unet/config.json").as_bytes()).is_ok()
        );
        for hostile in [
            "../secret",
            "generator/../../secret",
            "/etc/passwd",
            "./x",
            "a//b",
            "C:\\x",
            "https://elsewhere.example/x",
            "a\\..\\b",
            "%2e%2e/x",
            "",
        ] {
            let err = Manifest::from_json("m.json", entry(hostile).as_bytes())
                .expect_err(hostile)
                .to_string();
            assert!(
                err.contains("m.json") && err.contains("plain path"),
                "{hostile}: {err}"
            );
        }
        let short_hash = r#"{"files": [{"file": "a", "bytes": 1, "sha256": "abc"}]}"#;
        let err = Manifest::from_json("m.json", short_hash.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn files_are_checked_by_size_and_hash() {
        let m = Manifest::from_json(
            "manifest.json",
            format!(
                r#"{{"files": [{{"file": "a/b.bin", "bytes": 3, "sha256": "{}"}}]}}"#,
                sha256_hex(b"abc")
            )
            .as_bytes(),
        )
        .unwrap();
        // The standard test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(m.check("a/b.bin", "x", b"abc").is_ok());
        let e = m
            .check("a/b.bin", "models/a/b.bin", b"abd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("models/a/b.bin: damaged: sha256"), "{e}");
        let e = m.check("a/b.bin", "x", b"ab").unwrap_err().to_string();
        assert!(e.contains("2 bytes, the manifest records 3"), "{e}");
        assert!(m.check("c", "c", b"").is_err());
        assert_eq!(m.files_under("a/").count(), 1);
    }
}
