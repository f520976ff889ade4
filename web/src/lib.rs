//! Tastebud in the browser: the wasm-bindgen API that the JS package and the demo use.
//!
//! JS fetches a model's files (names from [`Tastebud::clip_files`]), hands them over with
//! [`Tastebud::add_file`], then loads and scores. Everything runs through the same core as the
//! CLI; only the bytes arrive differently.

use serde_json::json;
use tastebud_core::models::clip::{CLIP_FILES, Clip};
use tastebud_core::preprocess::decode_rgb;
use tastebud_core::{ComputeDevice, DeviceChoice, ModelFiles, device};
use wasm_bindgen::prelude::*;

/// A device, and the models loaded on it.
#[wasm_bindgen]
pub struct Tastebud {
    device: ComputeDevice,
    pending: ModelFiles,
    clip: Option<Clip>,
}

fn js(e: tastebud_core::Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Tastebud {
    /// Starts a device: `"auto"`, `"gpu"` (WebGPU) or `"cpu"`. Call once per page: browsers
    /// allow one WebGPU runtime.
    pub async fn create(device: String) -> Result<Tastebud, JsError> {
        let choice: DeviceChoice = device.parse().map_err(js)?;
        let device = device::open(choice).await.map_err(js)?;
        Ok(Tastebud {
            device,
            pending: ModelFiles::default(),
            clip: None,
        })
    }

    /// One line saying which backend and adapter run the models.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.describe()
    }

    /// The file names a CLIP folder may hold; fetch those that exist and pass them to
    /// [`Tastebud::add_file`].
    pub fn clip_files() -> Vec<String> {
        CLIP_FILES.iter().map(|s| s.to_string()).collect()
    }

    /// Stages one file of the model about to be loaded.
    pub fn add_file(&mut self, name: String, bytes: Vec<u8>) {
        self.pending.insert(name, bytes);
    }

    /// Loads the staged files as a CLIP model; `origin` (the folder URL) names them in errors.
    pub fn load_clip(&mut self, origin: String) -> Result<(), JsError> {
        let mut files = std::mem::take(&mut self.pending);
        files.origin = origin;
        self.clip = Some(Clip::from_files(files, &self.device.device).map_err(js)?);
        Ok(())
    }

    /// CLIPScore of one PNG/JPEG image against `prompt`, as JSON `{cosine, logit}`.
    pub async fn score(&self, prompt: String, image: Vec<u8>) -> Result<String, JsError> {
        let clip = self
            .clip
            .as_ref()
            .ok_or_else(|| JsError::new("no CLIP model loaded: call load_clip first"))?;
        let decoded = decode_rgb("image", &image).map_err(js)?;
        let scores = clip.score(&prompt, &[decoded], false).await.map_err(js)?;
        let s = scores
            .first()
            .ok_or_else(|| JsError::new("no score returned"))?;
        Ok(json!({"cosine": s.cosine, "logit": s.logit}).to_string())
    }
}
