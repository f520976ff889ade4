//! The LAION aesthetic predictor v2: a five-layer MLP (768-1024-128-64-16-1, no activations;
//! the published `nn.Sequential` has dropouts between, hence keys `layers.0/2/4/6/7`) over the
//! L2-normalised CLIP ViT-L/14 image embedding. Scores run about 1..10.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::clip_reward::load_clip;
use super::{Reward, RewardKind};
use crate::files::ModelFiles;
use crate::models::clip::{CLIP_FILES, Clip};
use crate::preprocess::ImageProcessorConfig;
use crate::torch_pickle::{self, RawTensor};
use crate::{Error, Result, weights};

/// Head files, in order of preference (the first is the name LAION publishes it under).
pub const AESTHETIC_HEADS: &[&str] = &[
    "sac+logos+ava1-l14-linearMSE.pth",
    "aesthetic.pth",
    "aesthetic.safetensors",
];
/// The `nn.Sequential` indices of the head's Linear layers.
const SEQUENTIAL_INDICES: [usize; 5] = [0, 2, 4, 6, 7];

/// Every file an aesthetic reward folder may hold: a transformers CLIP ViT-L/14 and the head.
pub fn files_wanted() -> Vec<&'static str> {
    CLIP_FILES.iter().chain(AESTHETIC_HEADS).copied().collect()
}

/// The MLP head.
#[derive(Module, Debug)]
pub struct AestheticHead {
    pub layers: Vec<Linear>,
}

impl AestheticHead {
    /// Linears from `input` features through `widths` (the last one the score's 1).
    pub fn new(input: usize, widths: &[usize], device: &Device) -> Self {
        let mut width = input;
        let layers = widths
            .iter()
            .map(|&out| {
                let layer = LinearConfig::new(width, out).init(device);
                width = out;
                layer
            })
            .collect();
        Self { layers }
    }

    /// Reads the head from a `.pth` state dict or safetensors, checking that its layers chain
    /// from `input` features down to one score.
    pub fn from_bytes(file: &str, bytes: &[u8], input: usize, device: &Device) -> Result<Self> {
        let tensors = torch_pickle::read_tensors(file, bytes)?;
        let mut renamed = BTreeMap::new();
        let mut widths = Vec::new();
        let mut width = input;
        for (i, index) in SEQUENTIAL_INDICES.iter().enumerate() {
            let take = |part: &str| -> Result<&RawTensor> {
                let name = format!("layers.{index}.{part}");
                tensors.get(&name).ok_or_else(|| Error::MissingTensors {
                    file: file.to_string(),
                    tensors: vec![name],
                })
            };
            let weight = take("weight")?;
            let bias = take("bias")?;
            let out = weight.shape.first().copied().unwrap_or(0);
            let last = i + 1 == SEQUENTIAL_INDICES.len();
            if weight.shape != [out, width] || out == 0 || (last && out != 1) {
                let want_out = if last { 1 } else { out.max(1) };
                return Err(Error::BadShape {
                    file: file.to_string(),
                    tensor: format!("layers.{index}.weight"),
                    expected: vec![want_out, width],
                    found: weight.shape.clone(),
                });
            }
            renamed.insert(format!("layers.{i}.weight"), weight.clone());
            renamed.insert(format!("layers.{i}.bias"), bias.clone());
            widths.push(out);
            width = out;
        }
        let used: Vec<String> = SEQUENTIAL_INDICES
            .iter()
            .flat_map(|i| [format!("layers.{i}.weight"), format!("layers.{i}.bias")])
            .collect();
        let unused: Vec<String> = tensors
            .keys()
            .filter(|k| !used.contains(k))
            .cloned()
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnusedTensors {
                file: file.to_string(),
                tensors: unused,
            });
        }
        let bytes = torch_pickle::to_safetensors(file, &renamed)?;
        weights::load_into(Self::new(input, &widths, device), file, bytes, &[]).map(Module::no_grad)
    }

    /// `[batch, input] -> [batch]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<1> {
        let [n, _] = x.dims();
        self.layers
            .iter()
            .fold(x, |x, layer| layer.forward(x))
            .reshape([n])
    }
}

/// LAION aesthetic v2 on a CLIP's image embedding.
pub struct AestheticReward {
    pub clip: Clip,
    pub head: AestheticHead,
}

impl AestheticReward {
    /// A transformers CLIP folder (ViT-L/14 for the published head) holding the head file too
    /// (one of [`AESTHETIC_HEADS`], or the folder's only `.pth`).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let pth = files.names_with_extension(&["pth"]);
        let name = match AESTHETIC_HEADS.iter().find(|n| files.contains(n)) {
            Some(n) => n.to_string(),
            None if pth.len() == 1 => pth[0].clone(),
            None => {
                return Err(Error::MissingFile {
                    folder: files.origin.clone(),
                    wanted: format!("the aesthetic head: {}", AESTHETIC_HEADS.join(" or ")),
                });
            }
        };
        let head_file = files.label(&name);
        let head_bytes = files.take(&name).unwrap_or_default();
        let clip = load_clip(files, None, device)?;
        let head =
            AestheticHead::from_bytes(&head_file, &head_bytes, clip.config.projection_dim, device)?;
        Ok(Self { clip, head })
    }
}

impl Reward for AestheticReward {
    fn kind(&self) -> RewardKind {
        RewardKind::Aesthetic
    }

    fn image_config(&self) -> &ImageProcessorConfig {
        &self.clip.image_config
    }

    fn encode_prompt(&self, _prompt: &str, _truncate: bool) -> Result<Option<Tensor<2>>> {
        Ok(None)
    }

    fn score_pixels(&self, pixels: Tensor<4>, _prompt: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        let e = self.clip.image_embeds(pixels)?;
        let unit = e.clone() / e.powi_scalar(2).sum_dim(1).sqrt();
        Ok(self.head.forward(unit))
    }
}
