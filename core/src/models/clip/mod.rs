//! CLIP (transformers `CLIPModel` layout): text and vision towers, their projections and the
//! learned logit scale; CLIPScore of images against a prompt.

pub mod config;
pub mod encoder;
pub mod open_clip;
pub mod text;
pub mod text_encoder;
pub mod vision;

use crate::models::packed::Linear;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use self::config::{Activation, ClipConfig};
use self::text::ClipTextTransformer;
use self::vision::ClipVisionTransformer;
use crate::files::ModelFiles;
use crate::preprocess::{ImageFile, ImageProcessorConfig, PreprocessChoice, pixel_batch};
use crate::tokenizer::{ClipTokenizer, TokenizedPrompt};
use crate::{Error, Result, read_f32, torch_pickle, weights};

/// Files a CLIP folder may hold; a front end fetches those that exist.
pub const CLIP_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "model.gguf",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// Weight files in order of preference.
pub const CLIP_WEIGHTS: &[&str] = &[
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "model.gguf",
];

/// Key renames that bring every layout transformers loads into a CLIP to the hub's names
/// (`text_model.*`, `vision_model.*`, `text_projection`, ...), applied in order:
/// - a `clip.` prefix (`CLIPPreTrainedModel.base_model_prefix`, which transformers strips);
/// - a doubled tower prefix (`text_model.text_model.`), which its `PrefixChange` rules fold.
const CLIP_LAYOUTS: &[(&str, &str)] = &[
    ("clip.", ""),
    ("text_model.text_model.", "text_model."),
    ("vision_model.vision_model.", "vision_model."),
];
/// For standalone text encoders (`CLIPTextModel`, `CLIPTextModelWithProjection`) also the
/// unprefixed tower that transformers 5's `save_pretrained` writes for `CLIPTextModel`.
const TEXT_ENCODER_LAYOUTS: &[(&str, &str)] = &[
    ("embeddings.", "text_model.embeddings."),
    ("encoder.", "text_model.encoder."),
    ("final_layer_norm.", "text_model.final_layer_norm."),
];

/// Which layouts a checkpoint may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// `CLIPModel`: both towers, prefixed.
    Full,
    /// `CLIPTextModel(WithProjection)`: the text tower, prefixed or not.
    TextEncoder,
}

impl ClipLayout {
    fn rules(self) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
        let text: &[_] = match self {
            Self::Full => &[],
            Self::TextEncoder => TEXT_ENCODER_LAYOUTS,
        };
        CLIP_LAYOUTS.iter().chain(text)
    }

    /// A tensor's hub name.
    pub fn canonical_name(self, name: &str) -> String {
        self.rules().fold(name.to_string(), |n, (from, to)| {
            match n.strip_prefix(from) {
                Some(rest) => format!("{to}{rest}"),
                None => n,
            }
        })
    }

    /// The same renames as `(regex, replacement)` pairs for [`weights::load_remapped`].
    pub fn remap(self) -> Vec<(String, String)> {
        self.rules()
            .map(|(from, to)| (format!("^{}", from.replace('.', "\\.")), to.to_string()))
            .collect()
    }
}

/// The weights of `CLIPModel`, named as in transformers' checkpoints.
#[derive(Module, Debug)]
pub struct ClipModel {
    pub text_model: ClipTextTransformer,
    pub vision_model: ClipVisionTransformer,
    pub text_projection: Linear,
    pub visual_projection: Linear,
}

impl ClipModel {
    pub fn new(c: &ClipConfig, file: &str, device: &Device) -> Result<Self> {
        let t = &c.text_config;
        let v = &c.vision_config;
        Ok(Self {
            text_model: ClipTextTransformer::new(
                t,
                Activation::parse(&t.hidden_act, file)?,
                device,
            ),
            vision_model: ClipVisionTransformer::new(
                v,
                Activation::parse(&v.hidden_act, file)?,
                device,
            ),
            text_projection: Linear::new(t.hidden_size, c.projection_dim, false, device),
            visual_projection: Linear::new(v.hidden_size, c.projection_dim, false, device),
        })
    }
}

/// CLIPScore of one image against one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClipScore {
    /// Cosine similarity of the normalised embeddings.
    pub cosine: f32,
    /// `exp(logit_scale) * cosine`: transformers' `logits_per_image`.
    pub logit: f32,
}

/// A loaded CLIP: model, tokenizer and image preprocessing.
pub struct Clip {
    pub model: ClipModel,
    pub config: ClipConfig,
    pub tokenizer: ClipTokenizer,
    pub image_config: ImageProcessorConfig,
    /// The learned log scale (`logit_scale` in the checkpoint).
    pub logit_scale: f32,
    pub device: Device,
}

impl Clip {
    /// Loads a transformers CLIP folder (`config.json`, `model.safetensors`,
    /// `model.fp16.safetensors` or `pytorch_model.bin`, tokenizer files, optional
    /// `preprocessor_config.json`).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let config_file = files.label("config.json");
        let config: ClipConfig = files.json("config.json")?;
        config.validate(&config_file)?;
        let tokenizer = ClipTokenizer::from_files(&files)?;
        if tokenizer.max_length > config.text_config.max_position_embeddings {
            return Err(Error::Tokenizer {
                file: files.label("tokenizer_config.json"),
                reason: format!(
                    "model_max_length {} exceeds the text model's {} positions",
                    tokenizer.max_length, config.text_config.max_position_embeddings
                ),
            });
        }
        let image_config = ImageProcessorConfig::from_files(&files)?;
        if image_config.crop != config.vision_config.image_size {
            let source = ["preprocessor_config.json", "processor_config.json"]
                .into_iter()
                .find(|n| files.contains(n))
                .unwrap_or("preprocessor_config.json (absent: CLIP's default 224)");
            return Err(Error::BadJson {
                file: files.label(source),
                reason: format!(
                    "crop size {} differs from the vision model's image_size {}",
                    image_config.crop, config.vision_config.image_size
                ),
            });
        }
        let weights_name = files.first_of(CLIP_WEIGHTS)?;
        let weights_file = files.label(weights_name);
        let bytes = torch_pickle::convert_archive(
            &weights_file,
            files.take(weights_name).unwrap_or_default(),
        )?;
        let logit_scale = weights::read_scalar(&weights_file, &bytes, "logit_scale")?
            .unwrap_or(config.logit_scale_init_value);
        let model = ClipModel::new(&config, &config_file, device)?;
        let model = weights::load_remapped(
            model,
            &weights_file,
            bytes,
            &["position_ids", "logit_scale"],
            &ClipLayout::Full.remap(),
        )?;
        Ok(Self {
            model,
            config,
            tokenizer,
            image_config,
            logit_scale,
            device: device.clone(),
        })
    }

    /// Tokenizes a prompt for this model; an empty prompt is an error (nothing to score).
    pub fn tokenize(&self, prompt: &str, truncate: bool) -> Result<TokenizedPrompt> {
        if prompt.trim().is_empty() {
            return Err(Error::BadPrompt("the prompt is empty".into()));
        }
        let tokens = self.tokenizer.encode(prompt, truncate)?;
        let vocab = self.config.text_config.vocab_size as u32;
        if let Some(id) = tokens.ids.iter().find(|&&id| id >= vocab) {
            return Err(Error::Tokenizer {
                file: "tokenizer vs config.json (text_config.vocab_size)".into(),
                reason: format!("token id {id} is outside the text model's vocabulary of {vocab}"),
            });
        }
        Ok(tokens)
    }

    /// Projected (unnormalised) text embeddings, `[prompts, projection_dim]`.
    pub fn text_embeds(&self, prompts: &[TokenizedPrompt]) -> Tensor<2> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let eos: Vec<usize> = prompts.iter().map(|p| p.eos_index).collect();
        let out = self.model.text_model.forward(&ids, &eos, &self.device);
        self.model.text_projection.forward(out.pooled)
    }

    /// Projected (unnormalised) image embeddings from normalised pixels.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, image_size, image_size]`; output `[batch, projection_dim]`
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Result<Tensor<2>> {
        let size = self.config.vision_config.image_size;
        let [_, c, h, w] = pixels.dims();
        if c != 3 || h != size || w != size {
            return Err(Error::BadArgument {
                argument: "pixels".into(),
                reason: format!(
                    "shape [_, {c}, {h}, {w}], the vision model takes [_, 3, {size}, {size}]"
                ),
            });
        }
        let pooled = self.model.vision_model.forward(pixels);
        Ok(self.model.visual_projection.forward(pooled))
    }

    /// Cosine similarities `[images, prompts]` (differentiable).
    pub fn cosine(image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        let unit = |t: Tensor<2>| t.clone() / t.powi_scalar(2).sum_dim(1).sqrt();
        unit(image_embeds).matmul(unit(text_embeds).transpose())
    }

    /// CLIPScore of image files against one prompt, each preprocessed as `preprocess` says.
    pub async fn score(
        &self,
        prompt: &str,
        images: &[ImageFile],
        preprocess: PreprocessChoice,
        truncate: bool,
    ) -> Result<Vec<ClipScore>> {
        if images.is_empty() {
            return Err(Error::BadArgument {
                argument: "images".into(),
                reason: "no image to score".into(),
            });
        }
        let tokens = self.tokenize(prompt, truncate)?;
        let text = self.text_embeds(&[tokens]);
        let pixels = pixel_batch(images, &self.image_config, preprocess, &self.device);
        let image = self.image_embeds(pixels)?;
        let cosine = read_f32(Self::cosine(image, text)).await?;
        let scale = self.logit_scale.exp();
        Ok(cosine
            .into_iter()
            .map(|c| ClipScore {
                cosine: c,
                logit: scale * c,
            })
            .collect())
    }
}
