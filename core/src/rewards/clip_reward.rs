//! The CLIP-family rewards: CLIPScore, PickScore and HPSv2 are one CLIP with different weights
//! and a different reading of the cosine (`exp(logit_scale) * cos`, or `cos` for HPS).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Reward, RewardKind};
use crate::files::ModelFiles;
use crate::models::clip::open_clip::{self, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, OpenClipArch};
use crate::models::clip::{CLIP_FILES, CLIP_WEIGHTS, Clip};
use crate::preprocess::{FilePreprocess, ImageProcessorConfig};
use crate::{Error, Result};

/// HPSv2's published checkpoints (open_clip state dicts under `state_dict`).
pub const HPS_WEIGHTS: &[&str] = &["HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt"];

/// Every file a CLIP-family reward folder may hold (a front end reads those that exist).
pub fn files_wanted() -> Vec<&'static str> {
    let mut names = CLIP_FILES.to_vec();
    names.extend(OPEN_CLIP_WEIGHTS);
    names.extend(HPS_WEIGHTS);
    names.push(OPEN_CLIP_CONFIG);
    names
}

/// Loads a CLIP from either layout: a transformers `CLIPModel` folder, or an OpenCLIP checkpoint
/// (`open_clip_model.safetensors`, a `.pt`/`.bin` state dict such as HPSv2's) with tokenizer files.
/// `default_arch` is used for OpenCLIP checkpoints without `open_clip_config.json`.
pub fn load_clip(
    mut files: ModelFiles,
    default_arch: Option<&OpenClipArch>,
    device: &Device,
) -> Result<Clip> {
    let transformers =
        files.contains("config.json") && CLIP_WEIGHTS.iter().any(|n| files.contains(n));
    if !transformers {
        let mut names: Vec<&str> = OPEN_CLIP_WEIGHTS
            .iter()
            .chain(HPS_WEIGHTS)
            .copied()
            .collect();
        let others = files.names_with_extension(&["pt", "pth"]);
        let single = (others.len() == 1).then(|| others[0].clone());
        if let Some(name) = &single {
            names.push(name);
        }
        let name = names
            .iter()
            .find(|n| files.contains(n))
            .map(|n| n.to_string());
        let Some(name) = name else {
            let mut wanted = vec!["config.json + model.safetensors (transformers)"];
            wanted.extend(OPEN_CLIP_WEIGHTS.iter().chain(HPS_WEIGHTS));
            return Err(Error::MissingFile {
                folder: files.origin.clone(),
                wanted: format!("{}, or one .pt file", wanted.join(" or ")),
            });
        };
        open_clip::to_transformers_files(&mut files, &name, default_arch)?;
    }
    let clip = Clip::from_files(files, device)?;
    Ok(Clip {
        model: clip.model.no_grad(),
        ..clip
    })
}

/// CLIPScore, PickScore or HPS.
pub struct ClipReward {
    kind: RewardKind,
    pub clip: Clip,
}

impl ClipReward {
    pub fn from_files(kind: RewardKind, files: ModelFiles, device: &Device) -> Result<Self> {
        let arch = (kind == RewardKind::Hps).then_some(&OpenClipArch::VIT_H_14);
        let mut clip = load_clip(files, arch, device)?;
        // PickScore's published code scores through transformers 4's `CLIPProcessor`; OpenAI
        // CLIP and open_clip (HPSv2) through torchvision transforms on PIL images.
        clip.image_config.files = match kind {
            RewardKind::PickScore => FilePreprocess::PilProcessor,
            _ => FilePreprocess::PilTransforms,
        };
        Ok(Self { kind, clip })
    }

    fn scale(&self) -> f32 {
        match self.kind {
            RewardKind::Hps => 1.0,
            _ => self.clip.logit_scale.exp(),
        }
    }
}

impl Reward for ClipReward {
    fn kind(&self) -> RewardKind {
        self.kind
    }

    fn image_config(&self) -> &ImageProcessorConfig {
        &self.clip.image_config
    }

    fn encode_prompt(&self, prompt: &str, truncate: bool) -> Result<Option<Tensor<2>>> {
        let tokens = self.clip.tokenize(prompt, truncate)?;
        Ok(Some(self.clip.text_embeds(&[tokens])))
    }

    fn score_pixels(&self, pixels: Tensor<4>, prompt: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        let text = prompt.ok_or_else(|| {
            Error::argument(
                self.kind.name(),
                "needs a prompt (its text side was not computed)",
            )
        })?;
        let image = self.clip.image_embeds(pixels)?;
        let [n, _] = image.dims();
        Ok(Clip::cosine(image, text.clone()).reshape([n]) * self.scale())
    }
}
