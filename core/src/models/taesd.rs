//! TAESD, diffusers' `AutoencoderTiny`: the tiny decoder from latents to images in [-1, 1].
//! Only the decoder is built; the file's encoder weights are tolerated and left unused.

use crate::models::packed::Conv2d;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::DIFFUSERS_WEIGHTS;
use super::layers::{conv3, upsample_nearest};
use crate::files::ModelFiles;
use crate::{Error, Result, weights};

/// The decoder's part of `AutoencoderTiny`'s `config.json` (diffusers' defaults = madebyollin/taesd).
#[derive(Debug, Clone, Deserialize)]
pub struct TinyAutoencoderConfig {
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_out")]
    pub out_channels: usize,
    #[serde(default = "d_channels")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "d_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "d_factor")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_upsample")]
    pub upsample_fn: String,
    #[serde(default = "d_scale")]
    pub scaling_factor: f32,
}

fn d_latent() -> usize {
    4
}
fn d_out() -> usize {
    3
}
fn d_channels() -> Vec<usize> {
    vec![64; 4]
}
fn d_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn d_factor() -> usize {
    2
}
fn d_act() -> String {
    "relu".into()
}
fn d_upsample() -> String {
    "nearest".into()
}
fn d_scale() -> f32 {
    1.0
}

/// `AutoencoderTinyBlock`: relu(conv3(relu(conv2(relu(conv1(x))))) + skip(x)).
#[derive(Module, Debug)]
pub struct TinyBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
}

/// One resolution: blocks, then (except last) nearest upsampling, then a conv.
#[derive(Module, Debug)]
pub struct TinyStage {
    pub blocks: Vec<TinyBlock>,
    pub conv: Conv2d,
    pub upsample: usize,
}

#[derive(Module, Debug)]
pub struct TinyDecoder {
    pub conv_in: Conv2d,
    pub stages: Vec<TinyStage>,
}

#[derive(Module, Debug)]
pub struct TinyAutoencoder {
    pub decoder: TinyDecoder,
}

impl TinyAutoencoder {
    pub fn new(c: &TinyAutoencoderConfig, device: &Device) -> Self {
        let last = c.num_decoder_blocks.len() - 1;
        let stages = c
            .num_decoder_blocks
            .iter()
            .zip(&c.decoder_block_out_channels)
            .enumerate()
            .map(|(i, (&n, &ch))| TinyStage {
                blocks: (0..n)
                    .map(|_| TinyBlock {
                        conv1: conv3(ch, ch, true, device),
                        conv2: conv3(ch, ch, true, device),
                        conv3: conv3(ch, ch, true, device),
                    })
                    .collect(),
                conv: if i == last {
                    conv3(ch, c.out_channels, true, device)
                } else {
                    conv3(ch, ch, false, device)
                },
                upsample: if i == last {
                    1
                } else {
                    c.upsampling_scaling_factor
                },
            })
            .collect();
        let conv_in = conv3(
            c.latent_channels,
            c.decoder_block_out_channels[0],
            true,
            device,
        );
        Self {
            decoder: TinyDecoder { conv_in, stages },
        }
    }

    /// diffusers keeps the decoder in one `nn.Sequential` (`decoder.layers.{k}`, activations and
    /// upsamplers included, blocks' convs at `conv.0/2/4`); this table maps it onto the fields.
    fn key_table(c: &TinyAutoencoderConfig) -> Vec<(String, String)> {
        let mut table = vec![(
            r"^decoder\.layers\.0\.".to_string(),
            "decoder.conv_in.".to_string(),
        )];
        let mut k = 2; // 0: conv_in, 1: ReLU
        let last = c.num_decoder_blocks.len() - 1;
        for (i, &n) in c.num_decoder_blocks.iter().enumerate() {
            for j in 0..n {
                table.push((
                    format!(r"^decoder\.layers\.{k}\."),
                    format!("decoder.stages.{i}.blocks.{j}."),
                ));
                k += 1;
            }
            if i != last {
                k += 1; // nn.Upsample
            }
            table.push((
                format!(r"^decoder\.layers\.{k}\."),
                format!("decoder.stages.{i}.conv."),
            ));
            k += 1;
        }
        for (from, to) in [("0", "conv1"), ("2", "conv2"), ("4", "conv3")] {
            table.push((
                format!(r"^(decoder\.stages\.\d+\.blocks\.\d+)\.conv\.{from}\."),
                format!("$1.{to}."),
            ));
        }
        table
    }

    /// Loads an `AutoencoderTiny` folder (`config.json` + diffusers weights).
    pub fn from_files(
        mut files: ModelFiles,
        device: &Device,
    ) -> Result<(Self, TinyAutoencoderConfig)> {
        let config_file = files.label("config.json");
        let c: TinyAutoencoderConfig = files.json("config.json")?;
        let bad = |field: &str, value: String| {
            Err(Error::Unsupported(format!(
                "{config_file}: {field} = {value}"
            )))
        };
        if c.act_fn != "relu" {
            return bad("act_fn", c.act_fn.clone());
        }
        if c.upsample_fn != "nearest" {
            return bad("upsample_fn", c.upsample_fn.clone());
        }
        if c.num_decoder_blocks.is_empty()
            || c.num_decoder_blocks.len() != c.decoder_block_out_channels.len()
        {
            return bad(
                "num_decoder_blocks",
                format!(
                    "{:?} (one per decoder_block_out_channels)",
                    c.num_decoder_blocks
                ),
            );
        }
        let name = files.first_of(DIFFUSERS_WEIGHTS)?;
        let file = files.label(name);
        let bytes = files.take(name).unwrap_or_default();
        let model = weights::load_remapped(
            Self::new(&c, device),
            &file,
            bytes,
            &["encoder."],
            &Self::key_table(&c),
        )?;
        Ok((model, c))
    }

    /// Latents (already divided by the scaling factor) to an image in [-1, 1].
    ///
    /// # Shapes
    /// - latents: `[batch, latent_channels, h, w]`; output `[batch, 3, h * 8, w * 8]`
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        // diffusers clamps the latents softly first.
        let mut x = relu(d.conv_in.forward((latents / 3.0).tanh() * 3.0));
        for stage in &d.stages {
            for b in &stage.blocks {
                let h = relu(b.conv1.forward(x.clone()));
                let h = relu(b.conv2.forward(h));
                x = relu(b.conv3.forward(h) + x);
            }
            if stage.upsample > 1 {
                x = upsample_nearest(x, stage.upsample);
            }
            x = stage.conv.forward(x);
        }
        x * 2.0 - 1.0
    }
}
