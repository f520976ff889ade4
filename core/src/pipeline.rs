//! One-step text-to-image pipelines from unmodified diffusers snapshots: `model_index.json`
//! names each component's class, and the pipeline loads the matching implementation.
//! `StableDiffusionPipeline` (SD 1.x, SD 2.x, SD-Turbo) and `StableDiffusionXLPipeline`
//! (SDXL, SDXL-Turbo) are covered, without classifier-free guidance (turbo models use none).
//! The same object serves the CLI, the browser and the tests; front ends time the stages.

use std::collections::BTreeMap;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use serde_json::Value;

use crate::models::DIFFUSERS_WEIGHTS;
use crate::models::clip::CLIP_WEIGHTS;
use crate::models::clip::text_encoder::ClipTextEncoder;
use crate::models::taesd::TinyAutoencoder;
use crate::models::unet::{TextTime, UNet};
use crate::models::vae::AutoencoderKl;
use crate::noise::{Noise, Rng};
use crate::scheduler::{EulerScheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::{Error, ModelFiles, Result, read_f32};

pub const MODEL_INDEX: &str = "model_index.json";
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// The most sampling steps accepted: these are one- and few-step models.
pub const MAX_STEPS: usize = 4;
/// The largest image generated, in pixels (4096 x 4096: 16x SD-Turbo's area, 4x SDXL's). Larger
/// requests are refused before anything is allocated: these models are trained at 512-1024 px,
/// and SD's VAE alone would need over 16 GiB of activations at this size.
pub const MAX_PIXELS: usize = 4096 * 4096;
/// The longest side generated, in pixels.
pub const MAX_SIDE: usize = 8192;

/// Which pipeline class the snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    StableDiffusion,
    StableDiffusionXl,
}

impl Family {
    fn components(self) -> &'static [&'static str] {
        match self {
            Family::StableDiffusion => &["scheduler", "text_encoder", "tokenizer", "unet", "vae"],
            Family::StableDiffusionXl => &[
                "scheduler",
                "text_encoder",
                "text_encoder_2",
                "tokenizer",
                "tokenizer_2",
                "unet",
                "vae",
            ],
        }
    }
}

/// `model_index.json`: the pipeline class and each component's class.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    pub family: Family,
    pub classes: BTreeMap<String, String>,
}

impl ModelIndex {
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadJson {
            file: file.into(),
            reason,
        };
        let json: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let class = json["_class_name"]
            .as_str()
            .ok_or_else(|| bad("no _class_name".into()))?;
        let family = match class {
            "StableDiffusionPipeline" => Family::StableDiffusion,
            "StableDiffusionXLPipeline" => Family::StableDiffusionXl,
            other => {
                return Err(Error::Unsupported(format!(
                    "{file}: _class_name = {other} (supported: StableDiffusionPipeline, \
                     StableDiffusionXLPipeline)"
                )));
            }
        };
        let mut classes = BTreeMap::new();
        for name in family.components() {
            // Each entry is [library, class]; [null, null] marks an absent component.
            match json[*name][1].as_str() {
                Some(c) => classes.insert(name.to_string(), c.to_string()),
                None => {
                    return Err(Error::MissingFile {
                        folder: file.into(),
                        wanted: format!(
                            "component `{name}` (a {class} needs {})",
                            family.components().join(", ")
                        ),
                    });
                }
            };
        }
        Ok(Self { family, classes })
    }

    /// What a front end should read, relative to the snapshot: per entry, alternatives in
    /// order of preference (read the first that exists, none if none does).
    pub fn files(&self) -> Vec<Vec<String>> {
        let mut out = vec![];
        for (name, class) in &self.classes {
            let alternatives: Vec<&[&str]> = match class.as_str() {
                "CLIPTokenizer" | "CLIPTokenizerFast" => {
                    TOKENIZER_FILES.iter().map(std::slice::from_ref).collect()
                }
                "CLIPTextModel" | "CLIPTextModelWithProjection" => {
                    vec![&["config.json"], CLIP_WEIGHTS]
                }
                c if c.ends_with("Scheduler") => vec![&["scheduler_config.json"]],
                _ => vec![&["config.json"], DIFFUSERS_WEIGHTS],
            };
            for group in alternatives {
                out.push(group.iter().map(|f| format!("{name}/{f}")).collect());
            }
        }
        out
    }
}

/// The image decoder: the snapshot's VAE or a swapped-in TAESD.
pub enum Decoder {
    Kl(Box<AutoencoderKl>),
    Tiny(Box<TinyAutoencoder>),
}

/// Files a decoder folder needs (`--decoder DIR`), alternatives in order of preference.
pub fn decoder_files() -> Vec<Vec<String>> {
    vec![
        vec!["config.json".into()],
        DIFFUSERS_WEIGHTS.iter().map(|s| s.to_string()).collect(),
    ]
}

/// A loaded decoder with what the pipeline needs to drive it.
pub struct LoadedDecoder {
    pub decoder: Decoder,
    pub scaling_factor: f32,
    /// Pixels per latent (8 for SD's VAE and TAESD).
    pub upscale: usize,
    pub class: String,
    /// Channels of each decoder stage, from the latent resolution up (each stage but the last
    /// ends by doubling the resolution): what sizes its largest activations.
    pub stage_channels: Vec<usize>,
    /// Bytes per activation element on its device (2 in f16, 4 in f32).
    pub element_bytes: u64,
}

impl LoadedDecoder {
    /// Loads an `AutoencoderKL` or `AutoencoderTiny` folder, chosen by its config's
    /// `_class_name` (or `class` from `model_index.json` when given).
    pub fn from_files(files: ModelFiles, class: Option<&str>, device: &Device) -> Result<Self> {
        let element_bytes = match device.settings().float_dtype {
            FloatDType::F16 | FloatDType::BF16 => 2,
            FloatDType::F64 => 8,
            _ => 4,
        };
        let class = match class {
            Some(c) => c.to_string(),
            None => {
                let config: Value = files.json("config.json")?;
                config["_class_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        match class.as_str() {
            "AutoencoderKL" => {
                let (vae, c) = AutoencoderKl::from_files(files, device)?;
                Ok(Self {
                    decoder: Decoder::Kl(Box::new(vae)),
                    scaling_factor: c.scaling_factor,
                    upscale: 1 << (c.block_out_channels.len() - 1),
                    class,
                    stage_channels: c.block_out_channels.iter().rev().copied().collect(),
                    element_bytes,
                })
            }
            "AutoencoderTiny" => {
                let (taesd, c) = TinyAutoencoder::from_files(files, device)?;
                let upscale = taesd.decoder.stages.iter().map(|s| s.upsample).product();
                Ok(Self {
                    decoder: Decoder::Tiny(Box::new(taesd)),
                    scaling_factor: c.scaling_factor,
                    upscale,
                    class,
                    stage_channels: c.decoder_block_out_channels.clone(),
                    element_bytes,
                })
            }
            other => Err(Error::Unsupported(format!(
                "{}: decoder class `{other}` (supported: AutoencoderKL, AutoencoderTiny)",
                files.label("config.json")
            ))),
        }
    }

    /// Bytes of the largest activation the decoder holds for a `[_, _, h, w]` latent in its
    /// precision: each stage's channels at its resolution, and again after its upsampling.
    pub fn largest_activation_bytes(&self, h: usize, w: usize) -> u64 {
        let n = self.stage_channels.len();
        (0..n)
            .map(|i| {
                let scale = 1u64 << (i + usize::from(i + 1 < n)).min(63);
                self.stage_channels[i] as u64
                    * (h as u64 * scale)
                    * (w as u64 * scale)
                    * self.element_bytes
            })
            .max()
            .unwrap_or(0)
    }

    /// Latent rows per band for decoding an `h x w` latent on a device whose largest buffer
    /// is `limit` bytes: `None` when the whole decode fits. The VAE decodes in bands (half the
    /// limit per band leaves room for halo rows and copies); TAESD does not band, and a size
    /// that cannot fit is an error naming the sizes.
    pub fn band_rows(&self, h: usize, w: usize, limit: Option<u64>) -> Result<Option<usize>> {
        let need = self.largest_activation_bytes(h, w);
        let Some(limit) = limit.filter(|&l| need > l) else {
            return Ok(None);
        };
        let per_row = need.div_ceil(h.max(1) as u64);
        let rows = (limit / 2 / per_row.max(1)) as usize;
        match &self.decoder {
            Decoder::Kl(_) if rows > 0 => Ok(Some(rows.min(h))),
            _ => Err(Error::Unsupported(format!(
                "decoding {}x{} with this {} needs a {} MiB tensor, over this device's {} MiB \
                 buffer limit: use a smaller size, another decoder, or --device cpu",
                w * self.upscale,
                h * self.upscale,
                self.class,
                need >> 20,
                limit >> 20
            ))),
        }
    }

    /// Final latents to an image in about [-1, 1], in bands when the device's largest buffer
    /// (`limit`) cannot hold the whole decode.
    pub fn decode(&self, latents: Tensor<4>, limit: Option<u64>) -> Tensor<4> {
        let [_, _, h, w] = latents.dims();
        let rows = self.band_rows(h, w, limit).ok().flatten();
        let latents = latents / self.scaling_factor;
        match (&self.decoder, rows) {
            (Decoder::Kl(vae), Some(rows)) => vae.decode_banded(latents, rows),
            (Decoder::Kl(vae), None) => vae.decode(latents),
            (Decoder::Tiny(taesd), _) => taesd.decode(latents),
        }
    }
}

struct TextSlot {
    tokenizer: ClipTokenizer,
    encoder: ClipTextEncoder,
}

/// The prompt's conditioning, computed once per prompt.
pub struct Conditioning {
    pub context: Tensor<3>,
    /// SDXL's pooled text embedding.
    pub pooled: Option<Tensor<2>>,
    /// The prompt was longer than the text encoder takes and was cut, as diffusers does.
    pub truncated: bool,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// A unit-Gaussian tensor `[1, C, H/8, W/8]`, or `None` to draw one from `seed`.
    pub noise: Option<Noise>,
    /// Seeds the noise when none is given, and the extra noise of ancestral steps.
    pub seed: u64,
    pub steps: usize,
    /// Pixels; `None` takes the noise's size, else the model's default.
    pub height: Option<usize>,
    pub width: Option<usize>,
}

/// An 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

pub struct Pipeline {
    pub family: Family,
    pub origin: String,
    text: Vec<TextSlot>,
    pub unet: UNet,
    pub decoder: LoadedDecoder,
    scheduler: SchedulerConfig,
    scheduler_file: String,
    ancestral: bool,
    device: Device,
    /// The device's largest buffer, when it has one (wgpu): requests whose decoder activations
    /// exceed it are refused up front instead of failing inside the backend.
    buffer_limit: Option<u64>,
}

impl Pipeline {
    /// Loads a snapshot: `files` holds `model_index.json` and what [`ModelIndex::files`] lists,
    /// by path relative to the snapshot.
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let index_file = files.label(MODEL_INDEX);
        let bytes = files.take(MODEL_INDEX).ok_or_else(|| Error::MissingFile {
            folder: files.origin.clone(),
            wanted: MODEL_INDEX.into(),
        })?;
        let index = ModelIndex::parse(&index_file, &bytes)?;
        let class = |name: &str| index.classes[name].as_str();
        let supported = |name: &str, ok: &[&str]| {
            if ok.contains(&class(name)) {
                Ok(())
            } else {
                Err(Error::Unsupported(format!(
                    "{index_file}: {name} = {} (supported: {})",
                    class(name),
                    ok.join(", ")
                )))
            }
        };
        let encoders: &[(&str, &str)] = match index.family {
            Family::StableDiffusion => &[("tokenizer", "text_encoder")],
            Family::StableDiffusionXl => &[
                ("tokenizer", "text_encoder"),
                ("tokenizer_2", "text_encoder_2"),
            ],
        };
        let mut text = vec![];
        for (tokenizer, encoder) in encoders {
            supported(tokenizer, &["CLIPTokenizer", "CLIPTokenizerFast"])?;
            supported(encoder, &["CLIPTextModel", "CLIPTextModelWithProjection"])?;
            text.push(TextSlot {
                tokenizer: ClipTokenizer::from_files(&files.subfolder(tokenizer))?,
                encoder: ClipTextEncoder::from_files(files.subfolder(encoder), device)?,
            });
        }
        supported(
            "scheduler",
            &["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"],
        )?;
        let scheduler_files = files.subfolder("scheduler");
        let scheduler_file = scheduler_files.label("scheduler_config.json");
        let scheduler: SchedulerConfig = scheduler_files.json("scheduler_config.json")?;
        EulerScheduler::new(&scheduler, 1, &scheduler_file)?; // refuse unsupported configs now
        supported("unet", &["UNet2DConditionModel"])?;
        let unet = UNet::from_files(files.subfolder("unet"), device)?;
        supported("vae", &["AutoencoderKL", "AutoencoderTiny"])?;
        let decoder =
            LoadedDecoder::from_files(files.subfolder("vae"), Some(class("vae")), device)?;
        let pipeline = Self {
            family: index.family,
            origin: files.origin.clone(),
            text,
            unet,
            decoder,
            scheduler,
            scheduler_file,
            ancestral: class("scheduler") == "EulerAncestralDiscreteScheduler",
            device: device.clone(),
            buffer_limit: None,
        };
        pipeline.check_conditioning_widths(&index_file)?;
        Ok(pipeline)
    }

    /// The text encoders' widths must add up to what the UNet cross-attends to.
    fn check_conditioning_widths(&self, file: &str) -> Result<()> {
        let width: usize = self.text.iter().map(|t| t.encoder.config.hidden_size).sum();
        let wanted = self.unet.config.cross_attention_dim;
        if width != wanted {
            return Err(Error::Unsupported(format!(
                "{file}: the text encoders give {width} features per token; the UNet's \
                 cross_attention_dim is {wanted}"
            )));
        }
        Ok(())
    }

    /// Swaps the image decoder (e.g. TAESD for speed).
    pub fn set_decoder(&mut self, decoder: LoadedDecoder) {
        self.decoder = decoder;
    }

    /// Tells the pipeline the device's largest buffer in bytes (see
    /// [`crate::ComputeDevice::max_buffer_bytes`]); `None` for no limit.
    pub fn set_buffer_limit(&mut self, bytes: Option<u64>) {
        self.buffer_limit = bytes;
    }

    /// The model's default image size: UNet `sample_size` x decoder upscale, as diffusers.
    pub fn default_size(&self) -> usize {
        self.unet.config.sample_size * self.decoder.upscale
    }

    /// Tokenizes (cutting overlong prompts to the encoder's length, as diffusers does) and
    /// encodes the prompt: SD takes the last hidden state; SDXL concatenates both encoders'
    /// penultimate states and takes the second encoder's projected pooled output.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Conditioning> {
        let mut truncated = false;
        let mut states = vec![];
        let mut pooled = None;
        for slot in &self.text {
            let tokens = slot.tokenizer.encode(prompt, true)?;
            truncated |= tokens.truncated;
            let tokens = [tokens];
            match self.family {
                Family::StableDiffusion => {
                    states.push(slot.encoder.forward(&tokens)?.last_hidden_state);
                }
                Family::StableDiffusionXl => {
                    let (penultimate, out) = slot.encoder.forward_with_penultimate(&tokens)?;
                    states.push(penultimate);
                    pooled = slot.encoder.project(out.pooled);
                }
            }
        }
        if self.family == Family::StableDiffusionXl && pooled.is_none() {
            return Err(Error::Unsupported(
                "SDXL's second text encoder has no text_projection (pooled conditioning)".into(),
            ));
        }
        Ok(Conditioning {
            context: Tensor::cat(states, 2),
            pooled,
            truncated,
        })
    }

    /// Checks the request and returns (height, width, unit noise).
    pub fn prepare(&self, request: &Request) -> Result<(usize, usize, Noise)> {
        if !(1..=MAX_STEPS).contains(&request.steps) {
            return Err(Error::argument(
                "steps",
                format!("{} (one-step models take 1 to {MAX_STEPS})", request.steps),
            ));
        }
        let f = self.decoder.upscale;
        let channels = self.unet.config.in_channels;
        let from_noise = request
            .noise
            .as_ref()
            .and_then(|n| match n.shape.as_slice() {
                [1, _, h, w] => Some((h * f, w * f)),
                _ => None,
            });
        let default = from_noise.unwrap_or((self.default_size(), self.default_size()));
        let height = request.height.unwrap_or(default.0);
        let width = request.width.unwrap_or(default.1);
        for (flag, v) in [("height", height), ("width", width)] {
            if v == 0 || v % f != 0 {
                return Err(Error::argument(
                    flag,
                    format!("{v} pixels: must be a positive multiple of {f}"),
                ));
            }
            if v > MAX_SIDE {
                return Err(Error::argument(
                    flag,
                    format!("{v} pixels: the longest side Tastebud generates is {MAX_SIDE}"),
                ));
            }
        }
        if height * width > MAX_PIXELS {
            return Err(Error::argument(
                "width x height",
                format!(
                    "{width}x{height} is {} pixels, over the budget of {MAX_PIXELS} (4096x4096)",
                    height * width
                ),
            ));
        }
        self.decoder
            .band_rows(height / f, width / f, self.buffer_limit)?;
        let shape = vec![1, channels, height / f, width / f];
        let noise = match &request.noise {
            Some(n) if n.shape != shape => {
                return Err(Error::argument(
                    "noise",
                    format!(
                        "shape {:?}; a {width}x{height} image needs {shape:?}",
                        n.shape
                    ),
                ));
            }
            Some(n) => n.clone(),
            None => Noise::from_seed(request.seed, &shape),
        };
        if let Some(i) = noise.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::argument(
                "noise",
                format!("value {i} is {}", noise.values[i]),
            ));
        }
        Ok((height, width, noise))
    }

    /// Samples latents from unit noise: `steps` Euler (or Euler ancestral) steps, calling
    /// `on_step(done, total)` after each.
    pub fn denoise(
        &self,
        conditioning: &Conditioning,
        noise: &Noise,
        steps: usize,
        seed: u64,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<4>> {
        let shape: [usize; 4] = match noise.shape.as_slice() {
            &[b, c, h, w] => [b, c, h, w],
            other => {
                return Err(Error::argument(
                    "noise",
                    format!("shape {other:?}; expected 4 dimensions"),
                ));
            }
        };
        let unit =
            Tensor::<4>::from_data(TensorData::new(noise.values.clone(), shape), &self.device);
        self.denoise_tensor(conditioning, unit, steps, seed, on_step)
    }

    /// [`Pipeline::denoise`] from unit noise already on the device: on an autodiff device with
    /// `require_grad`, gradients flow back to it (ReNO).
    pub fn denoise_tensor(
        &self,
        conditioning: &Conditioning,
        unit: Tensor<4>,
        steps: usize,
        seed: u64,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<4>> {
        let scheduler = EulerScheduler::new(&self.scheduler, steps, &self.scheduler_file)?;
        let shape = unit.dims();
        let upload =
            |values: Vec<f32>| Tensor::<4>::from_data(TensorData::new(values, shape), &self.device);
        let mut latents = unit * scheduler.init_noise_sigma;
        let (height, width) = (
            (shape[2] * self.decoder.upscale) as f32,
            (shape[3] * self.decoder.upscale) as f32,
        );
        // One prompt for a batch of noises: its conditioning repeated per noise.
        let batch = shape[0];
        let context = match conditioning.context.dims() {
            [1, seq, d] if batch > 1 => conditioning.context.clone().expand([batch, seq, d]),
            _ => conditioning.context.clone(),
        };
        let text_time = conditioning.pooled.as_ref().map(|pooled| TextTime {
            text_embeds: match pooled.dims() {
                [1, d] if batch > 1 => pooled.clone().expand([batch, d]),
                _ => pooled.clone(),
            },
            time_ids: vec![[height, width, 0.0, 0.0, height, width]; batch],
        });
        // Ancestral steps draw fresh noise from a stream of their own; every noise of a batch
        // draws what it would alone, so batching never changes an image.
        let mut rng = Rng::new(seed ^ 0xA5A5_A5A5_A5A5_A5A5);
        let per_noise: usize = shape[1..].iter().product();
        for (i, &t) in scheduler.timesteps.iter().enumerate() {
            let input = scheduler.scale_model_input(latents.clone(), i);
            let eps = self.unet.forward(input, t, &context, text_time.as_ref())?;
            latents = if self.ancestral {
                let fresh = upload(rng.gaussian(per_noise).repeat(batch));
                scheduler.step_ancestral(eps, i, latents, fresh)
            } else {
                scheduler.step(eps, i, latents)
            };
            on_step(i + 1, steps);
        }
        Ok(latents)
    }

    /// Decodes latents to an image in about [-1, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        self.decode_with(&self.decoder, latents)
    }

    /// Decodes with another decoder for these latents (a cheap proxy such as TAESD).
    pub fn decode_with(&self, decoder: &LoadedDecoder, latents: Tensor<4>) -> Tensor<4> {
        decoder.decode(latents, self.buffer_limit)
    }

    /// The device the pipeline's weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The whole job: prompt and noise (or seed) to an RGB image.
    pub async fn generate(&self, request: &Request) -> Result<RgbImage> {
        let (_, _, noise) = self.prepare(request)?;
        let conditioning = self.encode_prompt(&request.prompt)?;
        let latents = self.denoise(
            &conditioning,
            &noise,
            request.steps,
            request.seed,
            &mut |_, _| {},
        )?;
        to_rgb8(self.decode(latents)).await
    }
}

/// diffusers' postprocessing: clamp(x / 2 + 0.5, 0, 1) * 255, rounded half to even, as RGB.
pub async fn to_rgb8(image: Tensor<4>) -> Result<RgbImage> {
    let [b, c, height, width] = image.dims();
    if b != 1 || c != 3 {
        return Err(Error::argument(
            "image",
            format!(
                "decoder gave shape {:?}; expected one RGB image",
                image.dims()
            ),
        ));
    }
    let values = read_f32(image).await?;
    let plane = height * width;
    let mut pixels = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        for ch in 0..3 {
            let v = (values[ch * plane + p] / 2.0 + 0.5).clamp(0.0, 1.0);
            pixels.push((v * 255.0).round_ties_even() as u8);
        }
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

impl RgbImage {
    /// PNG bytes with `text` as tEXt metadata (prompt, seed, steps, model...).
    pub fn to_png(&self, text: &[(&str, String)]) -> Result<Vec<u8>> {
        let failed = |e: String| Error::argument("png", e);
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder
                .add_itxt_chunk(key.to_string(), value.clone())
                .map_err(|e| failed(e.to_string()))?;
        }
        let mut writer = encoder.write_header().map_err(|e| failed(e.to_string()))?;
        writer
            .write_image_data(&self.pixels)
            .map_err(|e| failed(e.to_string()))?;
        writer.finish().map_err(|e| failed(e.to_string()))?;
        Ok(out)
    }
}
