//! A person's own reward: their fitted head (see [`crate::personal`]) on a CLIP's unit image
//! embedding (and, for heads that read the prompt, its unit text embedding). It steers ReNO and
//! the search methods like any population reward, alone or mixed with them.

use burn::tensor::{Device, Tensor};

use super::clip_reward::load_clip;
use super::{Reward, RewardKind};
use crate::files::ModelFiles;
use crate::models::clip::{CLIP_FILES, Clip};
use crate::personal::{HEAD_CONFIG, HEAD_WEIGHTS, PersonalHead};
use crate::preprocess::{ImageFile, ImageProcessorConfig, PreprocessChoice, pixel_batch};
use crate::{Error, Result, read_f32};

/// A head folder's files and the CLIP's (handed over together).
pub fn files_wanted() -> Vec<&'static str> {
    CLIP_FILES
        .iter()
        .chain(&[HEAD_CONFIG, HEAD_WEIGHTS])
        .copied()
        .collect()
}

fn unit(t: Tensor<2>) -> Tensor<2> {
    t.clone() / t.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12)
}

/// Unit image embeddings of image files, preprocessed as the CLIP's published code does:
/// what heads are fitted on.
pub async fn embed_images(clip: &Clip, images: &[ImageFile]) -> Result<Vec<Vec<f32>>> {
    if images.is_empty() {
        return Ok(vec![]);
    }
    let pixels = pixel_batch(
        images,
        &clip.image_config,
        PreprocessChoice::Auto,
        &clip.device,
    );
    let e = unit(clip.image_embeds(pixels)?);
    let d = e.dims()[1];
    Ok(read_f32(e).await?.chunks(d).map(<[f32]>::to_vec).collect())
}

/// A prompt's unit text embedding.
pub async fn embed_prompt(clip: &Clip, prompt: &str, truncate: bool) -> Result<Vec<f32>> {
    let tokens = clip.tokenize(prompt, truncate)?;
    read_f32(unit(clip.text_embeds(&[tokens]))).await
}

/// A fitted head on a CLIP.
pub struct PersonalReward {
    pub clip: Clip,
    pub head: PersonalHead,
}

impl PersonalReward {
    /// `head.json` + `head.safetensors` and a transformers CLIP folder whose embeddings the
    /// head was fitted on (their dimensions must agree).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let head = PersonalHead::from_files(&mut files, device)?;
        let clip = load_clip(files, None, device)?;
        if clip.config.projection_dim != head.config.dimension {
            return Err(Error::argument(
                "personal",
                format!(
                    "the head reads {}-dimensional embeddings, this CLIP makes {}: give the CLIP \
                     it was fitted with",
                    head.config.dimension, clip.config.projection_dim
                ),
            ));
        }
        Ok(Self { clip, head })
    }
}

impl Reward for PersonalReward {
    fn kind(&self) -> RewardKind {
        RewardKind::Personal
    }

    fn image_config(&self) -> &ImageProcessorConfig {
        &self.clip.image_config
    }

    fn encode_prompt(&self, prompt: &str, truncate: bool) -> Result<Option<Tensor<2>>> {
        if !self.head.config.context {
            return Ok(None);
        }
        let tokens = self.clip.tokenize(prompt, truncate)?;
        Ok(Some(unit(self.clip.text_embeds(&[tokens]))))
    }

    fn score_pixels(&self, pixels: Tensor<4>, prompt: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        let e = unit(self.clip.image_embeds(pixels)?);
        let [n, d] = e.dims();
        let context = prompt.map(|t| t.clone().expand([n, d]));
        self.head.score(e, context)
    }
}
