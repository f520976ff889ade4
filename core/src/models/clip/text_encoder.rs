//! A standalone CLIP text encoder, as diffusers snapshots ship it in `text_encoder/`
//! (`CLIPTextModel`, or `CLIPTextModelWithProjection` for SDXL's second encoder): a flat
//! `CLIPTextConfig` and `text_model.*` weights (+ `text_projection.weight`), or the unprefixed
//! tower transformers 5 saves (every layout of [`ClipLayout::TextEncoder`]). SD 2.x's encoder
//! is OpenCLIP-H with its last layer dropped: `num_hidden_layers` 23 and the final LayerNorm.

use crate::models::packed::Linear;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::config::{Activation, ClipTextConfig};
use super::text::{ClipTextTransformer, TextOutput};
use super::{CLIP_WEIGHTS, ClipLayout};
use crate::files::ModelFiles;
use crate::tokenizer::TokenizedPrompt;
use crate::{Error, Result, weights};

/// Files a text encoder folder may hold.
pub const TEXT_ENCODER_FILES: &[&str] =
    &["config.json", "model.safetensors", "model.fp16.safetensors"];

/// The weights of `CLIPTextModel` / `CLIPTextModelWithProjection`.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub text_model: ClipTextTransformer,
    pub text_projection: Option<Linear>,
}

/// A loaded text encoder (its tokenizer lives in a sibling folder: load it separately).
pub struct ClipTextEncoder {
    pub model: ClipTextModel,
    pub config: ClipTextConfig,
    pub device: Device,
}

impl ClipTextEncoder {
    /// Loads a `text_encoder/` folder: `config.json` and `model.safetensors` or
    /// `model.fp16.safetensors`. The projection is loaded when the file has one.
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let config_file = files.label("config.json");
        let config: ClipTextConfig = files.json("config.json")?;
        config.validate(&config_file)?;
        let activation = Activation::parse(&config.hidden_act, &config_file)?;
        let weights_name = files.first_of(CLIP_WEIGHTS)?;
        let weights_file = files.label(weights_name);
        // A `torch.save` archive as safetensors; GGUF (`tastebud quantize`) loads as it is.
        let bytes = crate::torch_pickle::convert_archive(
            &weights_file,
            files.take(weights_name).unwrap_or_default(),
        )?;
        let layout = ClipLayout::TextEncoder;
        let projected = weights::tensor_names(&weights_file, &bytes)?
            .iter()
            .any(|k| layout.canonical_name(k) == "text_projection.weight");
        let model = ClipTextModel {
            text_model: ClipTextTransformer::new(&config, activation, device),
            text_projection: projected
                .then(|| Linear::new(config.hidden_size, config.projection_dim, false, device)),
        };
        let model = weights::load_remapped(
            model,
            &weights_file,
            bytes,
            &["position_ids"],
            &layout.remap(),
        )?;
        Ok(Self {
            model,
            config,
            device: device.clone(),
        })
    }

    /// Runs the encoder on tokenized prompts (all of the same padded length).
    pub fn forward(&self, prompts: &[TokenizedPrompt]) -> Result<TextOutput> {
        let ids = self.checked_ids(prompts)?;
        let eos: Vec<usize> = prompts.iter().map(|p| p.eos_index).collect();
        Ok(self.model.text_model.forward(&ids, &eos, &self.device))
    }

    /// What SDXL takes from each encoder in one pass: the state after the last layer but one,
    /// without the final LayerNorm (transformers' `hidden_states[-2]`), and the outputs.
    pub fn forward_with_penultimate(
        &self,
        prompts: &[TokenizedPrompt],
    ) -> Result<(Tensor<3>, TextOutput)> {
        let ids = self.checked_ids(prompts)?;
        let eos: Vec<usize> = prompts.iter().map(|p| p.eos_index).collect();
        Ok(self
            .model
            .text_model
            .forward_with_penultimate(&ids, &eos, &self.device))
    }

    fn checked_ids(&self, prompts: &[TokenizedPrompt]) -> Result<Vec<Vec<u32>>> {
        let seq = prompts.first().map_or(0, |p| p.ids.len());
        let vocab = self.config.vocab_size as u32;
        let malformed = |p: &TokenizedPrompt| p.ids.len() != seq || p.eos_index >= seq;
        if prompts.is_empty()
            || prompts.iter().any(malformed)
            || seq > self.model.text_model.max_positions()
        {
            return Err(Error::BadArgument {
                argument: "prompts".into(),
                reason: format!(
                    "need one or more prompts of equal length up to {} tokens",
                    self.model.text_model.max_positions()
                ),
            });
        }
        if let Some(id) = prompts.iter().flat_map(|p| &p.ids).find(|&&id| id >= vocab) {
            return Err(Error::BadArgument {
                argument: "prompts".into(),
                reason: format!(
                    "token id {id} is outside the text encoder's vocabulary of {vocab}"
                ),
            });
        }
        Ok(prompts.iter().map(|p| p.ids.clone()).collect())
    }

    /// The projected pooled embedding, when the encoder has a projection.
    pub fn project(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.model
            .text_projection
            .as_ref()
            .map(|p| p.forward(pooled))
    }
}
