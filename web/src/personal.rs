//! Personal heads in the browser: fit a person's head from their preference file, rank
//! embeddings by it, ask the next pair, save and load it. Heads train and score on the CPU
//! backend (they are small), in the page; nothing leaves it. A fitted head steers generation
//! when its files are staged with a CLIP's and added as the `personal` reward.

use serde_json::json;
use tastebud_core::ComputeDevice;
use tastebud_core::burn::tensor::Device;
use tastebud_core::personal::active::choose_next;
use tastebud_core::personal::fit::{FitConfig, HeadSettings, Pairs, fit_head};
use tastebud_core::personal::store::{Limits, PreferenceStore};
use tastebud_core::personal::{HEAD_CONFIG, HEAD_WEIGHTS, HeadKind, PersonalHead};
use tastebud_core::{Error, ModelFiles};
use wasm_bindgen::prelude::*;

use crate::js;

fn device() -> Device {
    ComputeDevice::cpu().device.autodiff()
}

fn rows(flat: &[f32], d: usize, what: &str) -> Result<Vec<Vec<f32>>, JsError> {
    if d == 0 || !flat.len().is_multiple_of(d) {
        return Err(js(Error::argument(
            what,
            format!(
                "{} values are not a whole number of {d}-dimensional embeddings",
                flat.len()
            ),
        )));
    }
    Ok(flat.chunks(d).map(<[f32]>::to_vec).collect())
}

/// A person's fitted head (or a population base).
#[wasm_bindgen]
pub struct Head {
    head: PersonalHead,
}

#[wasm_bindgen]
impl Head {
    /// Fits a head of `kind` (`linear`, `mlp`, `pal`, `vpl`) to a preference file (its JSON
    /// bytes; every record needs its embeddings). PAL and VPL start from a pretrained `base`; a
    /// linear head may too (a population prior from `personalize pretrain --head linear`).
    /// `context`: read the prompt too (records need prompt embeddings). `steps`/`lr`/`l2`:
    /// `tastebud personalize fit`'s defaults when `undefined`.
    pub async fn fit(
        prefs: Vec<u8>,
        kind: String,
        base: Option<Head>,
        context: Option<bool>,
        steps: Option<usize>,
        lr: Option<f64>,
        l2: Option<f32>,
    ) -> Result<Head, JsError> {
        let store =
            PreferenceStore::from_json("preferences", &prefs, &Limits::default()).map_err(js)?;
        let pairs = Pairs::from_store(&store, context.unwrap_or(false)).map_err(js)?;
        let defaults = FitConfig::default();
        let settings = HeadSettings {
            fit: FitConfig {
                steps: steps.unwrap_or(defaults.steps),
                lr: lr.unwrap_or(defaults.lr),
                l2: l2.unwrap_or(defaults.l2),
                seed: 0,
            },
            ..HeadSettings::new(HeadKind::parse(&kind).map_err(js)?)
        };
        let mut head = fit_head(&settings, base.map(|b| b.head), &pairs, &device())
            .await
            .map_err(js)?;
        head.config.embedding_model = head
            .config
            .embedding_model
            .clone()
            .or(store.embedding_model);
        Ok(Head { head })
    }

    /// Loads a head from its `head.json` and `head.safetensors` bytes.
    pub fn load(config: Vec<u8>, weights: Vec<u8>) -> Result<Head, JsError> {
        let mut files = ModelFiles::new("head");
        files.insert(HEAD_CONFIG, config);
        files.insert(HEAD_WEIGHTS, weights);
        Ok(Head {
            head: PersonalHead::from_files(&mut files, &device()).map_err(js)?,
        })
    }

    /// `head.json`'s bytes (stage with [`Head::weights`] under those names, with a CLIP's
    /// files, to add it as the `personal` reward).
    pub fn config(&self) -> Result<Vec<u8>, JsError> {
        Ok(self.head.to_files().map_err(js)?.0)
    }

    /// `head.safetensors`'s bytes.
    pub fn weights(&self) -> Result<Vec<u8>, JsError> {
        Ok(self.head.to_files().map_err(js)?.1)
    }

    /// Scores embeddings (flat, `n * dimension` values; made unit length), with the prompt's
    /// embedding for heads that read it.
    pub async fn score(
        &self,
        embeddings: Vec<f32>,
        prompt: Option<Vec<f32>>,
    ) -> Result<Vec<f32>, JsError> {
        let rows = rows(&embeddings, self.head.config.dimension, "embeddings")?;
        self.head
            .score_vectors(&rows, prompt.as_deref(), &device())
            .await
            .map_err(js)
    }

    /// Which pair of the candidate embeddings (flat) to ask the person of `prefs` about next:
    /// JSON `{first, second, information, p_first}` (indices). Works with a linear head (its
    /// Laplace posterior with `l2`, default the one it was fitted with) or a VPL head or base; `prompt`: the
    /// prompt's embedding for heads that read it.
    pub async fn next_pair(
        &self,
        prefs: Vec<u8>,
        candidates: Vec<f32>,
        prompt: Option<Vec<f32>>,
        l2: Option<f32>,
        samples: Option<usize>,
    ) -> Result<String, JsError> {
        let store =
            PreferenceStore::from_json("preferences", &prefs, &Limits::default()).map_err(js)?;
        let pairs = Pairs::from_store(&store, self.head.config.context).map_err(js)?;
        let rows = rows(&candidates, self.head.config.dimension, "candidates")?;
        let choice = choose_next(
            &self.head,
            &pairs,
            &rows,
            prompt.as_deref(),
            &[],
            l2,
            samples.unwrap_or(64),
            0,
            &device(),
        )
        .await
        .map_err(js)?
        .ok_or_else(|| JsError::new("need at least two candidates"))?;
        Ok(json!(choice).to_string())
    }

    /// The head's configuration, as JSON.
    #[wasm_bindgen(getter)]
    pub fn description(&self) -> String {
        json!(self.head.config).to_string()
    }
}

/// Validates a preference file and counts what it holds: JSON `{records, ties, users,
/// with_embeddings, dimension, contradictions}`, or an error naming the record and field.
#[wasm_bindgen]
pub fn preferences_summary(prefs: Vec<u8>) -> Result<String, JsError> {
    let store =
        PreferenceStore::from_json("preferences", &prefs, &Limits::default()).map_err(js)?;
    Ok(json!(store.summary()).to_string())
}

/// `current` with `incoming`'s records merged in (both validated; the same embedding model
/// and dimension; records already present are skipped). On any error `current` is untouched:
/// the caller keeps its bytes.
#[wasm_bindgen]
pub fn merge_preferences(current: Vec<u8>, incoming: Vec<u8>) -> Result<Vec<u8>, JsError> {
    let limits = Limits::default();
    let mut store =
        PreferenceStore::from_json("current preferences", &current, &limits).map_err(js)?;
    let other =
        PreferenceStore::from_json("imported preferences", &incoming, &limits).map_err(js)?;
    store.import(other).map_err(js)?;
    store.to_json().map_err(js)
}
