//! Tastebud in the browser: the wasm-bindgen API that the JS package and the demo use.
//!
//! JS fetches a model's files (names from [`Tastebud::clip_files`]), hands them over with
//! [`Tastebud::add_file`], then loads and scores. Everything runs through the same core as the
//! CLI; only the bytes arrive differently.

use serde_json::json;
use tastebud_core::models::clip::{CLIP_FILES, Clip};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{ModelIndex, Pipeline, Request, to_rgb8};
use tastebud_core::preprocess::{ImageFile, PreprocessChoice, decode_image};
use tastebud_core::reno::{Flow, FlowFuture, NoiseObjective, RenoConfig, reno_awaiting};
use tastebud_core::rewards::{self, ImageScores, RewardKind, RewardSet, RewardTerm};
use tastebud_core::search::{Method, search_awaiting};
use tastebud_core::{ComputeDevice, DeviceChoice, ModelFiles, Precision, device};
use wasm_bindgen::prelude::*;

mod loading;
mod model_store;
mod personal;
pub use personal::{Head, merge_preferences, preferences_summary};

/// A device, and the models loaded on it.
#[wasm_bindgen]
pub struct Tastebud {
    device: ComputeDevice,
    pending: ModelFiles,
    clip: Option<Clip>,
    pipeline: Option<Pipeline>,
    rewards: Option<RewardSet>,
    /// The CLIP folder `load_model` found, kept to build a personal reward on it.
    clip_files: Option<ModelFiles>,
    /// The model's CLIP and a person's head together ([`Tastebud::set_taste`]).
    taste: Option<RewardSet>,
}

/// A generated image: RGBA for a canvas (`new ImageData(rgba, width, height)`) and a PNG file
/// with the prompt and settings in its text chunks.
#[wasm_bindgen]
pub struct GeneratedImage {
    width: usize,
    height: usize,
    rgba: Vec<u8>,
    png: Vec<u8>,
}

#[wasm_bindgen]
impl GeneratedImage {
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.width
    }
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn rgba(&self) -> Vec<u8> {
        self.rgba.clone()
    }
    pub fn png(&self) -> Vec<u8> {
        self.png.clone()
    }
}

impl GeneratedImage {
    fn from_rgb(width: usize, height: usize, rgb: &[u8], png: Vec<u8>) -> Self {
        let rgba = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        Self {
            width,
            height,
            rgba,
            png,
        }
    }
}

/// ReNO's result: the best image, its noise (`.npy`) and the JSON report of every iteration.
#[wasm_bindgen]
pub struct Optimized {
    report: String,
    noise: Vec<u8>,
    image: GeneratedImage,
}

#[wasm_bindgen]
impl Optimized {
    /// JSON `{labels, iterations: [...], best_iteration, best_scores, stopped}`.
    pub fn report(&self) -> String {
        self.report.clone()
    }
    /// The best noise as `.npy` bytes (`generate` takes it back).
    pub fn noise_npy(&self) -> Vec<u8> {
        self.noise.clone()
    }
    /// The best image.
    pub fn image(&self) -> GeneratedImage {
        GeneratedImage {
            width: self.image.width,
            height: self.image.height,
            rgba: self.image.rgba.clone(),
            png: self.image.png.clone(),
        }
    }
}

/// PNG/JPEG bytes from JS, decoded; errors name the image by index.
fn decode_all(images: &[js_sys::Uint8Array]) -> Result<Vec<ImageFile>, JsError> {
    images
        .iter()
        .enumerate()
        .map(|(i, bytes)| decode_image(&format!("image {i}"), &bytes.to_vec()))
        .collect::<tastebud_core::Result<Vec<_>>>()
        .map_err(js)
}

fn parse_preprocess(choice: Option<String>) -> Result<PreprocessChoice, JsError> {
    choice.as_deref().unwrap_or("auto").parse().map_err(js)
}

/// What a JS callback answered: `false` (or a promise of it, awaited: a worker yields to its
/// event loop there) stops; a throw stops too.
fn answer_flow(answer: Result<JsValue, JsValue>) -> FlowFuture {
    Box::pin(async move {
        let value = match answer {
            Ok(v) if v.is_instance_of::<js_sys::Promise>() => {
                wasm_bindgen_futures::JsFuture::from(js_sys::Promise::from(v)).await
            }
            other => other,
        };
        match value {
            Ok(v) if v == JsValue::FALSE => Flow::Stop,
            Ok(_) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    })
}

/// The best noise's picture (with a PNG saying where the noise came from) and its scores, as
/// `optimize` and `explore` return them.
async fn best_picture(
    objective: &NoiseObjective<'_>,
    model: &str,
    prompt: String,
    noise: &Noise,
    how: String,
) -> Result<(ImageScores, GeneratedImage), JsError> {
    let best = objective.evaluate(&noise.values, false).await.map_err(js)?;
    let image = to_rgb8(best.image).await.map_err(js)?;
    let png = image
        .to_png(&[
            ("prompt", prompt),
            ("model", model.to_string()),
            ("noise", how),
            ("software", "tastebud (browser)".to_string()),
        ])
        .map_err(js)?;
    let picture = GeneratedImage::from_rgb(image.width, image.height, &image.pixels, png);
    Ok((best.scores, picture))
}

/// The rewards a run steers toward: the model's (and added) rewards, or the taste's set.
fn steering_rewards<'a>(
    rewards: &'a mut Option<RewardSet>,
    taste: &'a mut Option<RewardSet>,
    with_taste: Option<bool>,
) -> Result<&'a mut RewardSet, JsError> {
    if with_taste.unwrap_or(false) {
        taste
            .as_mut()
            .ok_or_else(|| JsError::new("no taste set: call set_taste with a fitted head first"))
    } else {
        rewards.as_mut().ok_or_else(|| {
            JsError::new(
                "no reward to steer toward: the model came without a CLIP (a clip/ folder \
                 beside generator/, listed in its manifest.json) and none was added \
                 (add_reward)",
            )
        })
    }
}

const NO_GENERATOR: &str = "no generator loaded: load a diffusers snapshot (load_model or load_staged); a CLIP alone scores";

pub(crate) fn js(e: tastebud_core::Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Tastebud {
    /// Starts a device: `"auto"`, `"gpu"` (WebGPU) or `"cpu"`, computing in `precision`
    /// (`"f32"`, the default, or `"f16"`, which halves memory and needs the adapter's
    /// `shader-f16`). Call once per page: browsers allow one WebGPU runtime.
    pub async fn create(device: String, precision: Option<String>) -> Result<Tastebud, JsError> {
        let choice: DeviceChoice = device.parse().map_err(js)?;
        let precision: Precision = precision.as_deref().unwrap_or("f32").parse().map_err(js)?;
        let mut device = device::open(choice).await.map_err(js)?;
        device.set_precision(precision).map_err(js)?;
        // Autodiff everywhere, so ReNO can take gradients of the loaded models; weights are
        // frozen, so plain generation and scoring record no graph.
        device.device = device.device.clone().autodiff();
        Ok(Tastebud {
            device,
            pending: ModelFiles::default(),
            clip: None,
            pipeline: None,
            rewards: None,
            clip_files: None,
            taste: None,
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
    /// `preprocess`: `"auto"` (the default: OpenAI CLIP's PIL pipeline), `"pil"` or
    /// `"torchvision"` (transformers 5's `CLIPImageProcessor`).
    pub async fn score(
        &self,
        prompt: String,
        image: Vec<u8>,
        preprocess: Option<String>,
    ) -> Result<String, JsError> {
        let clip = self
            .clip
            .as_ref()
            .ok_or_else(|| JsError::new("no CLIP model loaded: call load_clip first"))?;
        let preprocess = parse_preprocess(preprocess)?;
        let decoded = decode_image("image", &image).map_err(js)?;
        let scores = clip
            .score(&prompt, &[decoded], preprocess, false)
            .await
            .map_err(js)?;
        let s = scores
            .first()
            .ok_or_else(|| JsError::new("no score returned"))?;
        Ok(json!({"cosine": s.cosine, "logit": s.logit}).to_string())
    }

    /// Unit image embeddings of PNG/JPEG images with the loaded CLIP (flat: `n * dimension`
    /// values), what personal heads are fitted on.
    pub async fn embed_images(&self, images: Vec<js_sys::Uint8Array>) -> Result<Vec<f32>, JsError> {
        let clip = self
            .clip
            .as_ref()
            .ok_or_else(|| JsError::new("no CLIP model loaded: call load_clip first"))?;
        let decoded = decode_all(&images)?;
        let rows = rewards::personal::embed_images(clip, &decoded)
            .await
            .map_err(js)?;
        Ok(rows.concat())
    }

    /// The file names a reward folder may hold (`kind`: clip, pickscore, hps, aesthetic); fetch
    /// those that exist and stage them with [`Tastebud::add_file`].
    pub fn reward_files(kind: String) -> Result<Vec<String>, JsError> {
        let kind = RewardKind::parse(&kind).map_err(js)?;
        Ok(rewards::files_wanted(kind)
            .iter()
            .map(|s| s.to_string())
            .collect())
    }

    /// Loads the staged files as a reward of `kind` and adds it to the reward set, weighted by
    /// `weight` (ReNO's default for the reward when `undefined`).
    pub fn add_reward(
        &mut self,
        kind: String,
        origin: String,
        weight: Option<f32>,
    ) -> Result<(), JsError> {
        let kind = RewardKind::parse(&kind).map_err(js)?;
        let mut files = std::mem::take(&mut self.pending);
        files.origin = origin;
        let term = RewardTerm {
            label: kind.name().to_string(),
            reward: rewards::load(kind, files, &self.device.device).map_err(js)?,
            weight: weight.unwrap_or(kind.default_weight()),
        };
        match &mut self.rewards {
            Some(set) => set.push(term).map_err(js)?,
            None => self.rewards = Some(RewardSet::new(vec![term]).map_err(js)?),
        }
        Ok(())
    }

    /// Scores PNG/JPEG images (an array of byte arrays, one batch) with every added reward:
    /// JSON `{labels, scores: [{rewards: [..], weighted_total, loss}]}`, one score per image.
    /// `preprocess`: `"auto"` (the default: each reward's published pipeline), `"pil"` or
    /// `"torchvision"`.
    pub async fn score_rewards(
        &mut self,
        prompt: String,
        images: Vec<js_sys::Uint8Array>,
        preprocess: Option<String>,
    ) -> Result<String, JsError> {
        let preprocess = parse_preprocess(preprocess)?;
        let set = self
            .rewards
            .as_mut()
            .ok_or_else(|| JsError::new("no reward loaded: call add_reward first"))?;
        let decoded = decode_all(&images)?;
        set.set_prompt(&prompt, false).map_err(js)?;
        let values = set
            .evaluate_files(&decoded, preprocess, &self.device.device)
            .map_err(js)?;
        let scores = set.read(values).await.map_err(js)?;
        let labels: Vec<&str> = set.terms().iter().map(|t| t.label.as_str()).collect();
        Ok(json!({"labels": labels, "scores": scores}).to_string())
    }

    /// Steers `optimize(..., with_taste = true)` by a person's fitted `head` on the model's
    /// CLIP, mixed with the CLIP's prompt reward: `taste_weight * personal + clip_weight * clip`
    /// (each reward's default weight when `undefined`; 0 leaves a term out).
    pub fn set_taste(
        &mut self,
        head: &Head,
        taste_weight: Option<f32>,
        clip_weight: Option<f32>,
    ) -> Result<(), JsError> {
        let clip = self.clip_files.as_ref().ok_or_else(|| {
            JsError::new("no CLIP loaded with the model: taste needs the model's CLIP (clip/)")
        })?;
        let mut terms = Vec::new();
        let clip_weight = clip_weight.unwrap_or(RewardKind::Clip.default_weight());
        if clip_weight != 0.0 {
            terms.push(RewardTerm {
                label: RewardKind::Clip.name().to_string(),
                reward: rewards::load(RewardKind::Clip, clip.clone(), &self.device.device)
                    .map_err(js)?,
                weight: clip_weight,
            });
        }
        let taste_weight = taste_weight.unwrap_or(RewardKind::Personal.default_weight());
        if taste_weight != 0.0 {
            let mut files = clip.clone();
            let config = head.config()?;
            let weights = head.weights()?;
            files.insert(tastebud_core::personal::HEAD_CONFIG, config);
            files.insert(tastebud_core::personal::HEAD_WEIGHTS, weights);
            terms.push(RewardTerm {
                label: RewardKind::Personal.name().to_string(),
                reward: rewards::load(RewardKind::Personal, files, &self.device.device)
                    .map_err(js)?,
                weight: taste_weight,
            });
        }
        self.taste = Some(RewardSet::new(terms).map_err(js)?);
        Ok(())
    }

    /// Which files of a diffusers snapshot to fetch, given its `model_index.json`: a JSON list
    /// of groups; fetch the first name of each group that exists (relative to the snapshot).
    pub fn pipeline_files(model_index: Vec<u8>) -> Result<String, JsError> {
        let index = ModelIndex::parse("model_index.json", &model_index).map_err(js)?;
        Ok(json!(index.files()).to_string())
    }

    /// Generates an image. `noise`: the bytes of a `.npy` or safetensors unit-Gaussian tensor
    /// `[1, 4, H/8, W/8]` (diffusers' image for that noise), or `undefined` to draw it from
    /// `seed`. `height`/`width`: pixels, or `undefined` for the noise's or model's size.
    pub async fn generate(
        &self,
        prompt: String,
        noise: Option<Vec<u8>>,
        seed: u64,
        steps: usize,
        height: Option<usize>,
        width: Option<usize>,
    ) -> Result<GeneratedImage, JsError> {
        let pipeline = self
            .pipeline
            .as_ref()
            .ok_or_else(|| JsError::new(NO_GENERATOR))?;
        let noise = match &noise {
            Some(bytes) => Some(Noise::from_bytes("noise", bytes).map_err(js)?),
            None => None,
        };
        let from_seed = noise.is_none();
        let request = Request {
            prompt: prompt.clone(),
            noise,
            seed,
            steps,
            height,
            width,
        };
        let image = pipeline.generate(&request).await.map_err(js)?;
        let mut meta = vec![
            ("prompt", prompt),
            ("model", pipeline.origin.clone()),
            ("steps", steps.to_string()),
            ("software", "tastebud (browser)".to_string()),
        ];
        meta.push(if from_seed {
            ("seed", seed.to_string())
        } else {
            ("noise", "given".to_string())
        });
        let png = image.to_png(&meta).map_err(js)?;
        Ok(GeneratedImage::from_rgb(
            image.width,
            image.height,
            &image.pixels,
            png,
        ))
    }

    /// ReNO: optimises the initial noise of `prompt`'s image toward the added rewards and
    /// returns the best iterate. `noise`/`seed`/`height`/`width` as for [`Tastebud::generate`]
    /// (one step); `lr`, `grad_clip`, `prior_weight`: ReNO's defaults when `undefined`.
    /// `on_iteration(json, preview)` gets each iteration (rewards, reward loss, norms, best so
    /// far) as it finishes, with the iteration's image every `preview_every` iterations (and
    /// the last); returning `false`, or a promise of `false`, stops after that iteration.
    #[allow(clippy::too_many_arguments)]
    pub async fn optimize(
        &mut self,
        prompt: String,
        noise: Option<Vec<u8>>,
        seed: u64,
        height: Option<usize>,
        width: Option<usize>,
        iterations: usize,
        lr: Option<f32>,
        grad_clip: Option<f32>,
        prior_weight: Option<f32>,
        on_iteration: Option<js_sys::Function>,
        preview_every: Option<usize>,
        with_taste: Option<bool>,
    ) -> Result<Optimized, JsError> {
        let pipeline = self
            .pipeline
            .as_ref()
            .ok_or_else(|| JsError::new(NO_GENERATOR))?;
        let rewards = steering_rewards(&mut self.rewards, &mut self.taste, with_taste)?;
        let noise = match &noise {
            Some(bytes) => Some(Noise::from_bytes("noise", bytes).map_err(js)?),
            None => None,
        };
        let request = Request {
            prompt: prompt.clone(),
            noise,
            seed,
            steps: 1,
            height,
            width,
        };
        let (_, _, noise) = pipeline.prepare(&request).map_err(js)?;
        let defaults = RenoConfig::default();
        let config = RenoConfig {
            iterations,
            lr: lr.unwrap_or(defaults.lr),
            grad_clip: grad_clip.unwrap_or(defaults.grad_clip),
            prior_weight: prior_weight.unwrap_or(defaults.prior_weight),
            preview_every,
            seed,
            ..defaults
        };
        let labels: Vec<String> = rewards.terms().iter().map(|t| t.label.clone()).collect();
        let objective =
            NoiseObjective::new(pipeline, rewards, &prompt, &noise.shape, 1, seed).map_err(js)?;
        let outcome = reno_awaiting(&objective, noise, &config, &mut |it, preview| {
            let Some(f) = &on_iteration else {
                return Box::pin(std::future::ready(Flow::Continue));
            };
            let event = JsValue::from_str(&json!(it).to_string());
            let preview = match preview {
                Some(image) => JsValue::from(GeneratedImage::from_rgb(
                    image.width,
                    image.height,
                    &image.pixels,
                    Vec::new(),
                )),
                None => JsValue::UNDEFINED,
            };
            answer_flow(f.call2(&JsValue::NULL, &event, &preview))
        })
        .await
        .map_err(js)?;
        let how = format!("ReNO, iteration {}", outcome.best_iteration);
        let (scores, image) = best_picture(
            &objective,
            &pipeline.origin,
            prompt,
            &outcome.best_noise,
            how,
        )
        .await?;
        let report = json!({
            "labels": labels,
            "iterations": outcome.trajectory,
            "best_iteration": outcome.best_iteration,
            "best_scores": scores,
            "stopped": outcome.stopped,
        });
        Ok(Optimized {
            report: report.to_string(),
            noise: outcome.best_noise.to_npy(),
            image,
        })
    }

    /// Exploration under a budget of generator+reward forward passes (a ReNO iteration costs
    /// 3), toward the same rewards as [`Tastebud::optimize`]: `method` is `"best-of-n"` (`seed`
    /// and seeds drawn from it, `search::candidate_seeds`, scored `batch` at a time, default 1)
    /// or `"zero-order"` (four neighbours a round around a moving pivot, step 0.2, the CLI's
    /// defaults). `on_step(json)` sees every scored noise; returning `false`, or a promise of
    /// `false`, stops. Returns the best image, its noise and JSON
    /// `{labels, steps, best_origin, best_scores, spent, stopped}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn explore(
        &mut self,
        prompt: String,
        seed: u64,
        height: Option<usize>,
        width: Option<usize>,
        method: String,
        budget: f32,
        batch: Option<usize>,
        on_step: Option<js_sys::Function>,
        with_taste: Option<bool>,
    ) -> Result<Optimized, JsError> {
        let pipeline = self
            .pipeline
            .as_ref()
            .ok_or_else(|| JsError::new(NO_GENERATOR))?;
        let rewards = steering_rewards(&mut self.rewards, &mut self.taste, with_taste)?;
        let method = match method.as_str() {
            "best-of-n" => Method::BestOfN {
                batch: batch.unwrap_or(1).max(1),
            },
            "zero-order" => Method::ZeroOrder {
                neighbours: 4,
                step: 0.2,
            },
            other => {
                return Err(JsError::new(&format!(
                    "method {other}: the browser explores with best-of-n or zero-order"
                )));
            }
        };
        let request = Request {
            prompt: prompt.clone(),
            noise: None,
            seed,
            steps: 1,
            height,
            width,
        };
        let (_, _, noise) = pipeline.prepare(&request).map_err(js)?;
        let labels: Vec<String> = rewards.terms().iter().map(|t| t.label.clone()).collect();
        let objective =
            NoiseObjective::new(pipeline, rewards, &prompt, &noise.shape, 1, seed).map_err(js)?;
        let outcome = search_awaiting(
            &objective,
            &noise.shape,
            seed,
            &method,
            budget,
            &mut |step| match &on_step {
                Some(f) => answer_flow(
                    f.call1(&JsValue::NULL, &JsValue::from_str(&json!(step).to_string())),
                ),
                None => Box::pin(std::future::ready(Flow::Continue)),
            },
        )
        .await
        .map_err(js)?;
        let how = outcome.best_origin.clone();
        let (scores, image) = best_picture(
            &objective,
            &pipeline.origin,
            prompt,
            &outcome.best_noise,
            how,
        )
        .await?;
        let report = json!({
            "labels": labels,
            "method": method,
            "steps": outcome.steps,
            "best_origin": outcome.best_origin,
            "best_scores": scores,
            "spent": outcome.spent,
            "stopped": outcome.stopped,
        });
        Ok(Optimized {
            report: report.to_string(),
            noise: outcome.best_noise.to_npy(),
            image,
        })
    }
}
