//! Loading a model into the engine: from a folder URL ([`Tastebud::load_model`]: a manifest's
//! files checked and cached, a diffusers snapshot, or a CLIP folder alone) or from files the
//! page staged ([`Tastebud::load_staged`]: a picked folder); both end in one `install`.

use serde_json::json;
use tastebud_core::ModelFiles;
use tastebud_core::models::clip::{CLIP_FILES, Clip};
use tastebud_core::pipeline::{ModelIndex, Pipeline, Request};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};
use wasm_bindgen::prelude::*;

use crate::model_store::{ModelStore, Source, fetch_manifest};
use crate::{Tastebud, js};

#[wasm_bindgen]
impl Tastebud {
    /// Loads a model from the folder URL `base` (ending in `/`), reporting each file's bytes
    /// to `on_progress({file, loaded, total, source})`. With a `manifest.json` there (the
    /// shipped shapes models, or a user's folder described the same way) every file is checked
    /// against it (size, SubtleCrypto sha256) and kept in the Cache API, so a second or offline
    /// visit loads from there; the generator comes from `generator/` (or the folder itself) and
    /// the CLIP from `clip/`, which becomes the scoring model and the reward. Without a manifest
    /// `base` is a diffusers snapshot, fetched as its `model_index.json` names (unchecked,
    /// uncached). Returns JSON `{files: [{file, bytes, source}], warnings, generator, clip}`.
    pub async fn load_model(
        &mut self,
        base: String,
        on_progress: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let base = if base.ends_with('/') {
            base
        } else {
            format!("{base}/")
        };
        let mut store = ModelStore::open(on_progress).await;
        let manifest = fetch_manifest(&mut store, &base)
            .await
            .map_err(|e| JsError::new(&e))?;
        let mut report = Vec::new();
        let mut generator: Option<ModelFiles> = None;
        let mut clip = ModelFiles::default();
        let mut note = |name: &str, bytes: &[u8], source: Source| {
            report.push(json!({"file": name, "bytes": bytes.len(), "source": source.name()}));
        };
        match &manifest {
            Some(manifest) => {
                let listed = |name: &str| manifest.files.iter().find(|f| f.file == name);
                let prefix = if listed("generator/model_index.json").is_some() {
                    "generator/"
                } else {
                    ""
                };
                let fetch = async |store: &mut ModelStore, name: &str| {
                    let entry = listed(name).ok_or_else(|| {
                        JsError::new(&format!("{base}manifest.json does not list {name}"))
                    })?;
                    store
                        .fetch_checked(entry, &format!("{base}{name}"))
                        .await
                        .map_err(|e| JsError::new(&e))
                };
                let index_name = format!("{prefix}model_index.json");
                // Without a model_index.json the folder is a CLIP alone (its files at the root).
                let clip_prefix = if listed(&index_name).is_some() {
                    let (index, source) = fetch(&mut store, &index_name).await?;
                    note(&index_name, &index, source);
                    let groups = ModelIndex::parse(&index_name, &index).map_err(js)?.files();
                    let files = generator.get_or_insert_default();
                    files.insert("model_index.json", index);
                    for group in groups {
                        let Some(name) = group
                            .iter()
                            .find(|n| listed(&format!("{prefix}{n}")).is_some())
                        else {
                            continue; // Pipeline::from_files names what is missing
                        };
                        let (bytes, source) = fetch(&mut store, &format!("{prefix}{name}")).await?;
                        note(&format!("{prefix}{name}"), &bytes, source);
                        files.insert(name.clone(), bytes);
                    }
                    "clip/"
                } else {
                    ""
                };
                for name in CLIP_FILES {
                    let path = format!("{clip_prefix}{name}");
                    if listed(&path).is_some() {
                        let (bytes, source) = fetch(&mut store, &path).await?;
                        note(&path, &bytes, source);
                        clip.insert(*name, bytes);
                    }
                }
            }
            None => {
                let index = store
                    .download("model_index.json", &format!("{base}model_index.json"), None)
                    .await
                    .map_err(|e| JsError::new(&e))?;
                if let Some(index) = index {
                    note("model_index.json", &index, Source::Network);
                    let groups = ModelIndex::parse("model_index.json", &index)
                        .map_err(js)?
                        .files();
                    let files = generator.get_or_insert_default();
                    files.insert("model_index.json", index);
                    for group in groups {
                        for name in group {
                            let url = format!("{base}{name}");
                            let got = store
                                .download(&name, &url, None)
                                .await
                                .map_err(|e| JsError::new(&e))?;
                            if let Some(bytes) = got {
                                note(&name, &bytes, Source::Network);
                                files.insert(name, bytes);
                                break;
                            }
                        }
                    }
                } else {
                    // A transformers CLIP folder (the loader names what is missing).
                    for name in CLIP_FILES {
                        let got = store
                            .download(name, &format!("{base}{name}"), None)
                            .await
                            .map_err(|e| JsError::new(&e))?;
                        if let Some(bytes) = got {
                            note(name, &bytes, Source::Network);
                            clip.insert(*name, bytes);
                        }
                    }
                    if clip.iter().next().is_none() {
                        return Err(JsError::new(&format!(
                            "{base} is not a model: it has none of manifest.json, \
                             model_index.json (a diffusers snapshot) or config.json (a CLIP)"
                        )));
                    }
                }
            }
        }
        let has_generator = generator.is_some();
        if let Some(files) = &mut generator {
            files.origin = base.clone();
        }
        clip.origin = if has_generator {
            format!("{base}clip/")
        } else {
            base.clone()
        };
        let has_clip = self.install(generator, clip, &mut store.warnings)?;
        Ok(json!({
            "files": report,
            "warnings": store.warnings,
            "generator": has_generator,
            "clip": has_clip,
        })
        .to_string())
    }

    /// Loads the staged files (`add_file`) as `load_model` loads a fetched folder: the generator
    /// from `generator/` or the root (`model_index.json` and its components), the CLIP from
    /// `clip/` when staged (the scoring model, the reward and the taste's embedding), or, with
    /// no `model_index.json`, a CLIP alone from the root. For a picked folder, its files named
    /// by their path in it. Returns JSON `{warnings, generator, clip}`.
    pub fn load_staged(&mut self, origin: String) -> Result<String, JsError> {
        let mut staged = std::mem::take(&mut self.pending);
        staged.origin = origin.clone();
        let mut clip = staged.subfolder("clip");
        clip.origin = format!("{origin}/clip");
        let generator = if staged.contains("generator/model_index.json") {
            Some(staged.subfolder("generator"))
        } else if staged.contains("model_index.json") {
            Some(staged)
        } else {
            clip = staged;
            None
        };
        let has_generator = generator.is_some();
        let mut warnings = Vec::new();
        let has_clip = self.install(generator, clip, &mut warnings)?;
        Ok(json!({"warnings": warnings, "generator": has_generator, "clip": has_clip}).to_string())
    }
}

impl Tastebud {
    /// Makes `generator` (if any) the pipeline and, unless empty, `clip` the scoring model, the
    /// reward and the taste's CLIP; says in `warnings` when the model's own size does not fit
    /// the device. Returns whether a CLIP was loaded.
    fn install(
        &mut self,
        generator: Option<ModelFiles>,
        clip: ModelFiles,
        warnings: &mut Vec<String>,
    ) -> Result<bool, JsError> {
        let pipeline = match generator {
            Some(files) => Some(self.pipeline_of(files, warnings)?),
            None => None,
        };
        let has_clip = clip.iter().next().is_some();
        if has_clip {
            let reward =
                rewards::load(RewardKind::Clip, clip.clone(), &self.device.device).map_err(js)?;
            self.clip = Some(Clip::from_files(clip.clone(), &self.device.device).map_err(js)?);
            self.clip_files = Some(clip);
            self.taste = None;
            self.rewards = Some(
                RewardSet::new(vec![RewardTerm {
                    label: RewardKind::Clip.name().to_string(),
                    reward,
                    weight: RewardKind::Clip.default_weight(),
                }])
                .map_err(js)?,
            );
        }
        self.pipeline = pipeline;
        Ok(has_clip)
    }

    /// A generation pipeline from a snapshot's files; `warnings` says up front, not at the
    /// first picture, when the model's own size does not fit this device's buffers (SD's VAE
    /// at 512 px needs 256 MiB; WebGPU often allows 128 MiB).
    fn pipeline_of(
        &self,
        generator: ModelFiles,
        warnings: &mut Vec<String>,
    ) -> Result<Pipeline, JsError> {
        let mut pipeline = Pipeline::from_files(generator, &self.device.device).map_err(js)?;
        pipeline.set_buffer_limit(self.device.max_buffer_bytes);
        let probe = Request {
            prompt: String::new(),
            noise: None,
            seed: 0,
            steps: 1,
            height: None,
            width: None,
        };
        if let Err(e) = pipeline.prepare(&probe) {
            warnings.push(format!(
                "at its own size this model does not fit {}: {e}",
                self.device.describe()
            ));
        }
        Ok(pipeline)
    }
}
