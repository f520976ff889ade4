//! Model folders as bytes. The core never touches the filesystem: a front end reads (or
//! fetches) the files a model asks for and hands them over as a [`ModelFiles`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The largest configuration file (`config.json`, `model_index.json`, ...) parsed: real ones
/// are a few kilobytes; 16 MiB leaves room for anything legitimate.
pub const MAX_JSON_BYTES: usize = 16 << 20;

/// The files of one model folder, by their path relative to the folder.
#[derive(Debug, Clone, Default)]
pub struct ModelFiles {
    /// Where the files came from (a folder path or URL), used in error messages.
    pub origin: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl ModelFiles {
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.files.insert(name.into(), bytes);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// Every file, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(n, b)| (n.as_str(), b.as_slice()))
    }

    /// Moves a file's bytes out (weights are large: they are not copied).
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        self.files.remove(name)
    }

    /// Names of the files whose extension is one of `extensions` (given without the dot).
    pub fn names_with_extension(&self, extensions: &[&str]) -> Vec<String> {
        self.files
            .keys()
            .filter(|n| {
                n.rsplit_once('.')
                    .is_some_and(|(_, ext)| extensions.contains(&ext))
            })
            .cloned()
            .collect()
    }

    /// Moves the files under `folder/` out into their own set (a pipeline's component).
    pub fn subfolder(&mut self, folder: &str) -> ModelFiles {
        let prefix = format!("{}/", folder.trim_end_matches('/'));
        let names: Vec<String> = self
            .files
            .keys()
            .filter(|n| n.starts_with(&prefix))
            .cloned()
            .collect();
        let mut sub = ModelFiles::new(self.label(folder));
        for name in names {
            if let Some(bytes) = self.files.remove(&name) {
                sub.insert(&name[prefix.len()..], bytes);
            }
        }
        sub
    }

    /// The path of a file for error messages: `origin/name`.
    pub fn label(&self, name: &str) -> String {
        format!("{}/{}", self.origin.trim_end_matches('/'), name)
    }

    /// The first of `names` that is present, or an error naming them all.
    pub fn first_of<'a>(&self, names: &[&'a str]) -> Result<&'a str> {
        names
            .iter()
            .copied()
            .find(|n| self.contains(n))
            .ok_or_else(|| Error::MissingFile {
                folder: self.origin.clone(),
                wanted: names.join(" or "),
            })
    }

    /// Parses a JSON file, naming the file on any error.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let bytes = self.get(name).ok_or_else(|| Error::MissingFile {
            folder: self.origin.clone(),
            wanted: name.to_string(),
        })?;
        if bytes.len() > MAX_JSON_BYTES {
            return Err(Error::BadJson {
                file: self.label(name),
                reason: format!(
                    "{} bytes, over the limit of {MAX_JSON_BYTES} for a configuration file",
                    bytes.len()
                ),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
            file: self.label(name),
            reason: e.to_string(),
        })
    }

    /// Parses a JSON file if present.
    pub fn json_opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        if self.contains(name) {
            self.json(name).map(Some)
        } else {
            Ok(None)
        }
    }
}
