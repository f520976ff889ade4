//! BLIP's image encoder (`blip/vit.py`, timm's ViT): patch embedding, class token, learned
//! positions, pre-norm blocks with a fused `qkv` projection and exact GELU, final LayerNorm
//! (eps 1e-6). It returns every token, which BLIP's text encoder cross-attends to.
//!
//! BLIP checkpoints hold no config: sizes come from tensor shapes, and the head count from
//! BLIP's 64-wide heads (ViT-B: 768 / 12, ViT-L: 1024 / 16).

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};

use crate::models::packed::{Conv2d, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::models::layers::{attention, linear3 as linear};
use crate::torch_pickle::RawTensor;
use crate::{Error, Result};

const HEAD_WIDTH: usize = 64;
const LAYER_NORM_EPS: f64 = 1e-6;

/// Sizes read off a checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlipVitConfig {
    pub width: usize,
    pub depth: usize,
    pub patch_size: usize,
    /// Side of the square input the position table was trained for.
    pub image_size: usize,
    pub mlp_width: usize,
}

impl BlipVitConfig {
    /// From the tensors under `prefix` (e.g. `blip.visual_encoder.`) of `file`.
    pub fn from_tensors(
        file: &str,
        tensors: &BTreeMap<String, RawTensor>,
        prefix: &str,
    ) -> Result<Self> {
        let shape = |name: &str| -> Result<&[usize]> {
            let key = format!("{prefix}{name}");
            tensors
                .get(&key)
                .map(|t| t.shape.as_slice())
                .ok_or_else(|| Error::MissingTensors {
                    file: file.to_string(),
                    tensors: vec![key],
                })
        };
        let bad = |name: &str, reason: String| Error::BadTensor {
            file: file.to_string(),
            tensor: format!("{prefix}{name}"),
            reason,
        };
        let (width, patch_size) = match shape("patch_embed.proj.weight")? {
            &[w, 3, p, q] if p == q && p > 0 && w > 0 => (w, p),
            s => {
                return Err(bad(
                    "patch_embed.proj.weight",
                    format!("shape {s:?}, expected [width, 3, patch, patch]"),
                ));
            }
        };
        if !width.is_multiple_of(HEAD_WIDTH) {
            return Err(bad(
                "patch_embed.proj.weight",
                format!("width {width} is not a multiple of BLIP's head width {HEAD_WIDTH}"),
            ));
        }
        let positions = match shape("pos_embed")? {
            &[1, n, w] if w == width => n,
            s => {
                return Err(bad(
                    "pos_embed",
                    format!("shape {s:?}, expected [1, tokens, {width}]"),
                ));
            }
        };
        let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid + 1 != positions {
            return Err(bad(
                "pos_embed",
                format!("{positions} positions are not a class token plus a square grid"),
            ));
        }
        let depth = (0..)
            .take_while(|i| tensors.contains_key(&format!("{prefix}blocks.{i}.attn.qkv.weight")))
            .count();
        let mlp_width = match shape("blocks.0.mlp.fc1.weight")? {
            &[m, w] if w == width => m,
            s => {
                return Err(bad(
                    "blocks.0.mlp.fc1.weight",
                    format!("shape {s:?}, expected [hidden, {width}]"),
                ));
            }
        };
        Ok(Self {
            width,
            depth,
            patch_size,
            image_size: grid * patch_size,
            mlp_width,
        })
    }
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

#[derive(Module, Debug)]
pub struct VitAttention {
    pub qkv: Linear,
    pub proj: Linear,
}

#[derive(Module, Debug)]
pub struct VitMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attn: VitAttention,
    pub norm2: LayerNorm,
    pub mlp: VitMlp,
}

#[derive(Module, Debug)]
pub struct BlipVisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<VitBlock>,
    pub norm: LayerNorm,
    pub image_size: usize,
}

impl BlipVisionTransformer {
    pub fn new(c: &BlipVitConfig, device: &Device) -> Self {
        let d = c.width;
        let grid = c.image_size / c.patch_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(LAYER_NORM_EPS)
                .init(device)
        };
        let lin = |i, o| Linear::new(i, o, true, device);
        let blocks = (0..c.depth)
            .map(|_| VitBlock {
                norm1: norm(),
                attn: VitAttention {
                    qkv: lin(d, 3 * d),
                    proj: lin(d, d),
                },
                norm2: norm(),
                mlp: VitMlp {
                    fc1: lin(d, c.mlp_width),
                    fc2: lin(c.mlp_width, d),
                },
            })
            .collect();
        Self {
            patch_embed: PatchEmbed {
                proj: Conv2d::new([3, d], c.patch_size, c.patch_size, 0, true, device),
            },
            cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            pos_embed: Param::from_tensor(Tensor::zeros([1, grid * grid + 1, d], device)),
            blocks,
            norm: norm(),
            image_size: c.image_size,
        }
    }

    /// Every token after the final LayerNorm.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, image_size, image_size]`
    /// - output: `[batch, 1 + patches, width]`
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<3>> {
        let [b, c, h, w] = pixels.dims();
        let side = self.image_size;
        if c != 3 || h != side || w != side {
            return Err(Error::argument(
                "pixels",
                format!("shape [_, {c}, {h}, {w}], BLIP's ViT takes [_, 3, {side}, {side}]"),
            ));
        }
        let patches = self.patch_embed.proj.forward(pixels);
        let [_, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1) + self.pos_embed.val();
        let heads = d / HEAD_WIDTH;
        let x = self.blocks.iter().fold(x, |x, block| {
            let y = block.norm1.forward(x.clone());
            // timm splits qkv's output as [3, heads, head_width]: q, k, v are its thirds.
            let qkv = linear(&block.attn.qkv, y);
            let part = |i: usize| qkv.clone().narrow(2, i * d, d);
            let y = attention(part(0), part(1), part(2), heads);
            let x = x + linear(&block.attn.proj, y);
            let y = block.norm2.forward(x.clone());
            x + linear(&block.mlp.fc2, gelu(linear(&block.mlp.fc1, y)))
        });
        Ok(self.norm.forward(x))
    }
}
