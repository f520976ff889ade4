//! The SD VAE decoder, diffusers' `AutoencoderKL` (decoder side): post_quant_conv, conv_in, a
//! mid block (resnet, single-head attention, resnet), up blocks of resnets with nearest 2x
//! upsampling, GroupNorm + SiLU + conv_out. Field names follow diffusers, so no remapping.

use burn::module::Module;
use burn::nn::GroupNorm;

use crate::models::packed::{Conv2d, Linear};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::DIFFUSERS_WEIGHTS;
use super::layers::{
    ResnetBlock, apply_group_norm, attention, conv3, group_norm, group_norm_silu, linear3, silu,
    upsample_nearest,
};
use crate::files::ModelFiles;
use crate::{Error, Result, weights};

/// The decoder's part of `AutoencoderKL`'s `config.json` (diffusers' names and defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKlConfig {
    #[serde(default = "d_out")]
    pub out_channels: usize,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(default = "d_scale")]
    pub scaling_factor: f32,
}

fn d_out() -> usize {
    3
}
fn d_latent() -> usize {
    4
}
fn d_channels() -> Vec<usize> {
    vec![64]
}
fn d_layers() -> usize {
    1
}
fn d_groups() -> usize {
    32
}
fn d_act() -> String {
    "silu".into()
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_true() -> bool {
    true
}
fn d_scale() -> f32 {
    0.18215
}

/// The VAE's GroupNorm epsilon (diffusers hard-codes 1e-6 in its encoder/decoder blocks).
const EPS: f64 = 1e-6;

/// The mid block's `Attention`: one head over all pixels, with a residual connection.
#[derive(Module, Debug)]
pub struct SpatialAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Vec<Linear>,
}

impl SpatialAttention {
    fn new(channels: usize, groups: usize, device: &Device) -> Self {
        let linear = || Linear::new(channels, channels, true, device);
        Self {
            group_norm: group_norm(groups, channels, EPS, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = apply_group_norm(&self.group_norm, x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let q = linear3(&self.to_q, tokens.clone());
        let k = linear3(&self.to_k, tokens.clone());
        let v = linear3(&self.to_v, tokens);
        let out = attention(q, k, v, 1);
        let out = self.to_out.iter().fold(out, |t, l| linear3(l, t));
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<SpatialAttention>,
}

#[derive(Module, Debug)]
pub struct Upsampler {
    pub conv: Conv2d,
}

#[derive(Module, Debug)]
pub struct UpDecoderBlock {
    pub resnets: Vec<ResnetBlock>,
    pub upsamplers: Vec<Upsampler>,
}

#[derive(Module, Debug)]
pub struct VaeDecoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpDecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// The decoder half of `AutoencoderKL`, with its weights named as in diffusers.
#[derive(Module, Debug)]
pub struct AutoencoderKl {
    pub post_quant_conv: Option<Conv2d>,
    pub decoder: VaeDecoder,
}

impl AutoencoderKl {
    pub fn new(c: &AutoencoderKlConfig, device: &Device) -> Self {
        let g = c.norm_num_groups;
        let top = *c.block_out_channels.last().unwrap_or(&64);
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut prev = top;
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let block = UpDecoderBlock {
                    resnets: (0..=c.layers_per_block)
                        .map(|j| {
                            ResnetBlock::new(
                                if j == 0 { prev } else { out },
                                out,
                                g,
                                EPS,
                                None,
                                device,
                            )
                        })
                        .collect(),
                    upsamplers: if i + 1 < reversed.len() {
                        vec![Upsampler {
                            conv: conv3(out, out, true, device),
                        }]
                    } else {
                        vec![]
                    },
                };
                prev = out;
                block
            })
            .collect();
        let bottom = c.block_out_channels.first().copied().unwrap_or(64);
        Self {
            post_quant_conv: c.use_post_quant_conv.then(|| {
                Conv2d::new(
                    [c.latent_channels, c.latent_channels],
                    1,
                    1,
                    0,
                    true,
                    device,
                )
            }),
            decoder: VaeDecoder {
                conv_in: conv3(c.latent_channels, top, true, device),
                mid_block: MidBlock {
                    resnets: vec![
                        ResnetBlock::new(top, top, g, EPS, None, device),
                        ResnetBlock::new(top, top, g, EPS, None, device),
                    ],
                    attentions: if c.mid_block_add_attention {
                        vec![SpatialAttention::new(top, g, device)]
                    } else {
                        vec![]
                    },
                },
                up_blocks,
                conv_norm_out: group_norm(g, bottom, EPS, device),
                conv_out: conv3(bottom, c.out_channels, true, device),
            },
        }
    }

    /// Loads an `AutoencoderKL` folder (`config.json` + diffusers weights); the encoder's
    /// weights are tolerated and left unused.
    pub fn from_files(
        mut files: ModelFiles,
        device: &Device,
    ) -> Result<(Self, AutoencoderKlConfig)> {
        let config_file = files.label("config.json");
        let c: AutoencoderKlConfig = files.json("config.json")?;
        let unsupported = |field: &str, value: String| {
            Err(Error::Unsupported(format!(
                "{config_file}: {field} = {value}"
            )))
        };
        if c.act_fn != "silu" {
            return unsupported("act_fn", c.act_fn.clone());
        }
        if let Some(t) = c.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return unsupported("up_block_types", t.clone());
        }
        if c.block_out_channels.is_empty() || c.up_block_types.len() != c.block_out_channels.len() {
            return unsupported(
                "up_block_types",
                format!(
                    "{} entries for {} block_out_channels",
                    c.up_block_types.len(),
                    c.block_out_channels.len()
                ),
            );
        }
        if let Some(ch) = c
            .block_out_channels
            .iter()
            .find(|ch| c.norm_num_groups == 0 || !ch.is_multiple_of(c.norm_num_groups))
        {
            return unsupported(
                "norm_num_groups",
                format!("{} does not divide {ch} channels", c.norm_num_groups),
            );
        }
        let name = files.first_of(DIFFUSERS_WEIGHTS)?;
        let file = files.label(name);
        let bytes = files.take(name).unwrap_or_default();
        let model = weights::load_into(
            Self::new(&c, device),
            &file,
            bytes,
            &["encoder.", "quant_conv."],
        )?;
        Ok((model, c))
    }

    /// Latents (already divided by the scaling factor) to an image in about [-1, 1].
    ///
    /// # Shapes
    /// - latents: `[batch, latent_channels, h, w]`; output `[batch, out_channels, h * 2^(blocks-1), ..]`
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let mut x = self.decode_mid(latents);
        let d = &self.decoder;
        for block in &d.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for up in &block.upsamplers {
                x = up.conv.forward(upsample_nearest(x, 2));
            }
        }
        d.conv_out.forward(group_norm_silu(&d.conv_norm_out, x))
    }

    /// post_quant_conv, conv_in and the mid block, at the latent resolution.
    fn decode_mid(&self, latents: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents,
        };
        let d = &self.decoder;
        let mut x = d.conv_in.forward(z);
        let mid = &d.mid_block;
        x = mid.resnets[0].forward(x, None);
        for attention in &mid.attentions {
            x = attention.forward(x);
        }
        mid.resnets[1].forward(x, None)
    }

    /// [`AutoencoderKl::decode`] with the up blocks run on bands of `rows` latent rows, so no
    /// tensor holds the whole high-resolution activation (devices that bind at most 128 MiB
    /// cannot hold SD's 256-channel 512x512 one). The same arithmetic: convolutions see one
    /// halo row from each neighbour band and GroupNorm statistics are reduced over all bands.
    pub fn decode_banded(&self, latents: Tensor<4>, rows: usize) -> Tensor<4> {
        let d = &self.decoder;
        let mut x = Bands::split(self.decode_mid(latents), rows.max(1));
        for block in &d.up_blocks {
            for resnet in &block.resnets {
                x = x.resnet(resnet);
            }
            for up in &block.upsamplers {
                x = x.map(|t| upsample_nearest(t, 2)).conv3(&up.conv);
            }
        }
        x.group_norm(&d.conv_norm_out)
            .map(silu)
            .conv3(&d.conv_out)
            .join()
    }
}

/// An activation held as bands of rows (dimension 2), top to bottom.
struct Bands(Vec<Tensor<4>>);

impl Bands {
    fn split(x: Tensor<4>, rows: usize) -> Self {
        let h = x.dims()[2];
        Self(
            (0..h)
                .step_by(rows)
                .map(|r| x.clone().narrow(2, r, rows.min(h - r)))
                .collect(),
        )
    }

    fn join(self) -> Tensor<4> {
        Tensor::cat(self.0, 2)
    }

    fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self(self.0.into_iter().map(f).collect())
    }

    /// A 3x3, padding-1 convolution: each band is extended by its neighbours' edge rows, and
    /// the rows computed from those (and from the zero padding above/below them) are dropped.
    fn conv3(&self, conv: &Conv2d) -> Self {
        let n = self.0.len();
        Self(
            (0..n)
                .map(|i| {
                    let band = self.0[i].clone();
                    let rows = band.dims()[2];
                    let mut parts = vec![];
                    if i > 0 {
                        let above = self.0[i - 1].clone();
                        let h = above.dims()[2];
                        parts.push(above.narrow(2, h - 1, 1));
                    }
                    parts.push(band);
                    if i + 1 < n {
                        parts.push(self.0[i + 1].clone().narrow(2, 0, 1));
                    }
                    conv.forward(Tensor::cat(parts, 2))
                        .narrow(2, usize::from(i > 0), rows)
                })
                .collect(),
        )
    }

    /// GroupNorm with its mean and variance taken over every band (two passes, as burn's).
    fn group_norm(&self, norm: &GroupNorm) -> Self {
        let groups = norm.num_groups;
        let grouped = |t: &Tensor<4>| {
            let [b, c, h, w] = t.dims();
            t.clone().reshape([b, groups, c / groups * h * w])
        };
        let count: usize = self
            .0
            .iter()
            .map(|t| t.dims()[1] / groups * t.dims()[2] * t.dims()[3])
            .sum();
        let sum = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            self.0
                .iter()
                .map(|t| f(grouped(t)).sum_dim(2))
                .reduce(|a, b| a + b)
        };
        let (Some(total), true) = (sum(&|t| t), count > 0) else {
            return Self(vec![]);
        };
        let mean = total / count as f64;
        let var = sum(&|t| (t - mean.clone()).square()).map(|v| v / count as f64);
        let Some(var) = var else {
            return Self(vec![]);
        };
        let inv = var.add_scalar(norm.epsilon).sqrt().recip();
        let c = norm.num_channels;
        Self(
            self.0
                .iter()
                .map(|t| {
                    let y = (grouped(t) - mean.clone()) * inv.clone();
                    let y = y.reshape(t.dims());
                    match (&norm.gamma, &norm.beta) {
                        (Some(g), Some(b)) => {
                            y * g.val().reshape([1, c, 1, 1]) + b.val().reshape([1, c, 1, 1])
                        }
                        _ => y,
                    }
                })
                .collect(),
        )
    }

    /// diffusers' `ResnetBlock2D` without time embedding (the VAE's), band by band.
    fn resnet(self, r: &ResnetBlock) -> Self {
        let h = self.group_norm(&r.norm1).map(silu).conv3(&r.conv1);
        let h = h.group_norm(&r.norm2).map(silu).conv3(&r.conv2);
        let skip = match &r.conv_shortcut {
            Some(conv) => self.map(|t| conv.forward(t)),
            None => self,
        };
        Self(skip.0.into_iter().zip(h.0).map(|(a, b)| a + b).collect())
    }
}
