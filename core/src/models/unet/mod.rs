//! diffusers' `UNet2DConditionModel` for the SD 1.x, SD 2.x (SD-Turbo) and SDXL (SDXL-Turbo)
//! families, built from the snapshot's `config.json`; field names follow diffusers so the
//! weights load unchanged.

pub mod config;
pub mod ldm;
pub mod transformer;

use burn::module::Module;
use burn::nn::GroupNorm;

use crate::models::packed::{Conv2d, Linear};
use burn::tensor::{Device, Tensor, TensorData};

pub use config::{UNetConfig, UNetConfigFile};
use transformer::Transformer2D;

use super::DIFFUSERS_WEIGHTS;
use super::layers::{ResnetBlock, conv3, group_norm, group_norm_silu, silu, upsample_nearest_to};
use crate::files::ModelFiles;
use crate::{Error, Result, weights};

/// `TimestepEmbedding`: linear_1 -> SiLU -> linear_2.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self {
            linear_1: Linear::new(cin, cout, true, device),
            linear_2: Linear::new(cout, cout, true, device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// diffusers' `get_timestep_embedding` for each value, in float32 as torch computes it:
/// exp(-ln(10000) * i / (half - shift)), then [sin, cos] of value * frequency (cos first
/// when `flip_sin_to_cos`). Computed on the host: the values are constants of the step.
pub fn timestep_embedding(
    values: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / (half as f32 - shift)).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
}

#[derive(Module, Debug)]
pub struct Upsample {
    pub conv: Conv2d,
}

/// `CrossAttnDownBlock2D` (with attentions) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Transformer2D>,
    pub downsamplers: Vec<Downsample>,
}

/// `CrossAttnUpBlock2D` or `UpBlock2D`: each resnet takes a skip connection concatenated.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Transformer2D>,
    pub upsamplers: Vec<Upsample>,
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub attentions: Vec<Transformer2D>,
    pub resnets: Vec<ResnetBlock>,
}

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// SDXL's extra conditioning (`added_cond_kwargs`): the pooled text embedding and the six
/// time ids (original size, crop top-left, target size).
pub struct TextTime {
    pub text_embeds: Tensor<2>,
    pub time_ids: Vec<[f32; 6]>,
}

/// The UNet with its resolved config.
#[derive(Debug)]
pub struct UNet {
    pub model: UNet2DConditionModel,
    pub config: UNetConfig,
}

impl UNet2DConditionModel {
    pub fn new(c: &UNetConfig, device: &Device) -> Self {
        let (g, eps) = (c.groups, c.eps);
        let c0 = c.down[0].out_channels;
        let temb = c0 * 4;
        let transformer = |ch: usize, heads: usize, depth: usize| {
            Transformer2D::new(
                ch,
                heads,
                depth,
                c.cross_attention_dim,
                g,
                c.linear_projection,
                device,
            )
        };
        let resnet = |cin, cout| ResnetBlock::new(cin, cout, g, eps, Some(temb), device);
        let n = c.down.len();
        let mut cin = c0;
        let down_blocks = c
            .down
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let cout = b.out_channels;
                let block = DownBlock {
                    resnets: (0..b.layers)
                        .map(|j| resnet(if j == 0 { cin } else { cout }, cout))
                        .collect(),
                    attentions: (0..b.layers)
                        .filter(|_| b.transformer_layers > 0)
                        .map(|_| transformer(cout, b.heads, b.transformer_layers))
                        .collect(),
                    downsamplers: (i + 1 < n)
                        .then(|| Downsample {
                            conv: Conv2d::new([cout, cout], 3, 2, 1, true, device),
                        })
                        .into_iter()
                        .collect(),
                };
                cin = cout;
                block
            })
            .collect();
        let top = c.down[n - 1].out_channels;
        let mid_block = MidBlock {
            attentions: vec![transformer(top, c.mid_heads, c.mid_transformer_layers)],
            resnets: vec![resnet(top, top), resnet(top, top)],
        };
        let mut prev = top;
        let up_blocks =
            c.up.iter()
                .enumerate()
                .map(|(i, b)| {
                    let cout = b.out_channels;
                    // The skip channels come from the down path in reverse.
                    let skip_in = c.up[(i + 1).min(n - 1)].out_channels;
                    let block = UpBlock {
                        resnets: (0..b.layers)
                            .map(|j| {
                                let skip = if j + 1 == b.layers { skip_in } else { cout };
                                let from = if j == 0 { prev } else { cout };
                                resnet(from + skip, cout)
                            })
                            .collect(),
                        attentions: (0..b.layers)
                            .filter(|_| b.transformer_layers > 0)
                            .map(|_| transformer(cout, b.heads, b.transformer_layers))
                            .collect(),
                        upsamplers: (i + 1 < n)
                            .then(|| Upsample {
                                conv: conv3(cout, cout, true, device),
                            })
                            .into_iter()
                            .collect(),
                    };
                    prev = cout;
                    block
                })
                .collect();
        Self {
            conv_in: conv3(c.in_channels, c0, true, device),
            time_embedding: TimestepEmbedding::new(c0, temb, device),
            add_embedding: c
                .text_time
                .map(|(_, input)| TimestepEmbedding::new(input, temb, device)),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(g, c0, eps, device),
            conv_out: conv3(c0, c.out_channels, true, device),
        }
    }
}

impl UNet {
    /// Loads a `unet/` folder: `config.json` and diffusers' weights (f32, f16 or bf16).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let config_file = files.label("config.json");
        let raw: UNetConfigFile = files.json("config.json")?;
        let config = UNetConfig::parse(raw, &config_file)?;
        let name = files.first_of(DIFFUSERS_WEIGHTS)?;
        let file = files.label(name);
        let bytes = files.take(name).unwrap_or_default();
        // stable-diffusion.cpp's and ComfyUI-GGUF's files keep the original (LDM) names.
        let names = weights::tensor_names(&file, &bytes)?;
        let (renames, others) = if ldm::is_ldm(names.iter().map(String::as_str)) {
            (ldm::renames(&config), ldm::OTHER_MODELS)
        } else {
            (Vec::new(), &[][..])
        };
        let model = weights::load_remapped(
            UNet2DConditionModel::new(&config, device),
            &file,
            bytes,
            others,
            &renames,
        )?;
        Ok(Self { model, config })
    }

    /// One prediction (noise or v, as the model was trained).
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]`; timestep: one value for the batch;
    ///   context: `[batch, tokens, cross_attention_dim]`; output `[batch, out_channels, h, w]`.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        context: &Tensor<3>,
        text_time: Option<&TextTime>,
    ) -> Result<Tensor<4>> {
        let m = &self.model;
        let c = &self.config;
        let [batch, channels, _, _] = sample.dims();
        let device = sample.device();
        if channels != c.in_channels {
            return Err(Error::argument(
                "latents",
                format!("the UNet takes {} channels, got {channels}", c.in_channels),
            ));
        }
        let [cb, _, cd] = context.dims();
        if cb != batch || cd != c.cross_attention_dim {
            return Err(Error::argument(
                "text conditioning",
                format!(
                    "shape {:?}; the UNet wants [{batch}, tokens, {}]",
                    context.dims(),
                    c.cross_attention_dim
                ),
            ));
        }
        let c0 = c.down[0].out_channels;
        let upload = |values: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(values, shape), &device)
        };
        let t = timestep_embedding(&vec![timestep; batch], c0, c.flip_sin_to_cos, c.freq_shift);
        let mut temb = m.time_embedding.forward(upload(t, [batch, c0]));
        match (&m.add_embedding, c.text_time, text_time) {
            (Some(add), Some((time_dim, _)), Some(tt)) => {
                let [pb, _] = tt.text_embeds.dims();
                if pb != batch || tt.time_ids.len() != batch {
                    return Err(Error::argument(
                        "text_time",
                        format!(
                            "{pb} pooled embeddings and {} time ids for a batch of {batch}",
                            tt.time_ids.len()
                        ),
                    ));
                }
                let ids: Vec<f32> = tt.time_ids.iter().flatten().copied().collect();
                let time = timestep_embedding(&ids, time_dim, c.flip_sin_to_cos, c.freq_shift);
                let time = upload(time, [batch, 6 * time_dim]);
                let input = Tensor::cat(vec![tt.text_embeds.clone(), time], 1);
                let expected = add.linear_1.d_input();
                if input.dims()[1] != expected {
                    return Err(Error::argument(
                        "text_time",
                        format!(
                            "add_embedding takes {expected} values; pooled text ({}) + 6 time \
                             ids x {time_dim} give {}",
                            tt.text_embeds.dims()[1],
                            input.dims()[1]
                        ),
                    ));
                }
                temb = temb + add.forward(input);
            }
            (None, _, None) => {}
            (Some(_), _, None) => {
                return Err(Error::argument(
                    "text_time",
                    "this UNet (addition_embed_type = text_time) needs pooled text and time ids",
                ));
            }
            _ => {
                return Err(Error::argument(
                    "text_time",
                    "pooled text and time ids given to a UNet without text_time conditioning",
                ));
            }
        }
        let temb = Some(&temb);

        let mut x = m.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &m.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(x, temb);
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context);
                }
                skips.push(x.clone());
            }
            for down in &block.downsamplers {
                x = down.conv.forward(x);
                skips.push(x.clone());
            }
        }
        let mid = &m.mid_block;
        x = mid.resnets[0].forward(x, temb);
        for (attn, resnet) in mid.attentions.iter().zip(&mid.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), temb);
        }
        for block in &m.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::Unsupported("UNet block layout: too few skips".into()))?;
                x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb);
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context);
                }
            }
            for up in &block.upsamplers {
                // The next skip's size: a stride-2 level may have rounded an odd side up.
                let [_, _, h, w] = skips.last().map(|s| s.dims()).unwrap_or(x.dims());
                x = up.conv.forward(upsample_nearest_to(x, h, w));
            }
        }
        Ok(m.conv_out.forward(group_norm_silu(&m.conv_norm_out, x)))
    }
}
