//! `UNet2DConditionModel`'s `config.json`: diffusers' names and defaults, the per-block lists
//! resolved, and every option this implementation does not cover refused by name.

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// A config value that diffusers accepts as one number or one per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn resolve(&self, blocks: usize, field: &str, file: &str) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(n) => Ok(vec![*n; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Unsupported(format!(
                "{file}: {field} has {} entries for {blocks} down blocks",
                v.len()
            ))),
        }
    }
}

/// The raw fields (diffusers' defaults where a real config may omit them).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfigFile {
    #[serde(default = "d_4")]
    pub in_channels: usize,
    #[serde(default = "d_4")]
    pub out_channels: usize,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_sample")]
    pub sample_size: usize,
    /// Options whose non-default values this implementation refuses, kept raw to name them.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

fn d_4() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> PerBlock {
    PerBlock::One(2)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> PerBlock {
    PerBlock::One(1280)
}
fn d_one() -> PerBlock {
    PerBlock::One(1)
}
fn d_heads() -> PerBlock {
    PerBlock::One(8)
}
fn d_sample() -> usize {
    64
}
fn d_act() -> String {
    "silu".into()
}

/// One down (or up) block, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub out_channels: usize,
    /// Transformer2DModel layers per attention, 0 for a block without attention.
    pub transformer_layers: usize,
    pub heads: usize,
    pub layers: usize,
}

/// The config with per-block lists resolved and unsupported options refused.
#[derive(Debug, Clone)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down: Vec<BlockSpec>,
    /// Up blocks in forward order (deepest first), as diffusers reverses the down lists.
    pub up: Vec<BlockSpec>,
    pub mid_transformer_layers: usize,
    pub mid_heads: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    pub linear_projection: bool,
    /// Latent side the model was trained at (the default image size / 8).
    pub sample_size: usize,
    /// SDXL's `text_time` conditioning: (time id embedding width, add_embedding input width).
    pub text_time: Option<(usize, usize)>,
}

/// Options diffusers has that change the computation, with the value this code implements.
const FIXED_OPTIONS: &[(&str, Value)] = &[
    ("center_input_sample", Value::Bool(false)),
    ("only_cross_attention", Value::Bool(false)),
    ("dual_cross_attention", Value::Bool(false)),
    ("class_embed_type", Value::Null),
    ("num_class_embeds", Value::Null),
    ("encoder_hid_dim", Value::Null),
    ("encoder_hid_dim_type", Value::Null),
    ("time_cond_proj_dim", Value::Null),
    ("timestep_post_act", Value::Null),
    ("time_embedding_dim", Value::Null),
    ("time_embedding_act_fn", Value::Null),
    ("reverse_transformer_layers_per_block", Value::Null),
    ("mid_block_only_cross_attention", Value::Null),
    ("cross_attention_norm", Value::Null),
    ("class_embeddings_concat", Value::Bool(false)),
    ("resnet_skip_time_act", Value::Bool(false)),
];

impl UNetConfig {
    pub fn parse(raw: UNetConfigFile, file: &str) -> Result<Self> {
        let unsupported = |field: &str, value: String| {
            Err(Error::Unsupported(format!("{file}: {field} = {value}")))
        };
        for (name, value) in FIXED_OPTIONS {
            if let Some(found) = raw.rest.get(*name)
                && found != value
                && !(name == &"mid_block_only_cross_attention" && found == &Value::Bool(false))
            {
                return unsupported(name, found.to_string());
            }
        }
        let string_option = |name: &str, wanted: &str| -> Result<()> {
            match raw.rest.get(name) {
                Some(Value::String(s)) if s != wanted => unsupported(name, s.clone()).map(|_| ()),
                Some(v) if !v.is_string() && !v.is_null() => {
                    unsupported(name, v.to_string()).map(|_| ())
                }
                _ => Ok(()),
            }
        };
        string_option("time_embedding_type", "positional")?;
        string_option("resnet_time_scale_shift", "default")?;
        string_option("attention_type", "default")?;
        if let Some(v) = raw.rest.get("resnet_out_scale_factor")
            && v.as_f64() != Some(1.0)
        {
            return unsupported("resnet_out_scale_factor", v.to_string());
        }
        for (name, k) in [
            ("conv_in_kernel", 3),
            ("conv_out_kernel", 3),
            ("downsample_padding", 1),
            ("mid_block_scale_factor", 1),
        ] {
            if let Some(v) = raw.rest.get(name)
                && v.as_f64() != Some(k as f64)
            {
                return unsupported(name, v.to_string());
            }
        }
        if raw.act_fn != "silu" {
            return unsupported("act_fn", raw.act_fn.clone());
        }
        let n = raw.block_out_channels.len();
        if n == 0 || raw.down_block_types.len() != n || raw.up_block_types.len() != n {
            return unsupported(
                "down_block_types/up_block_types",
                format!(
                    "{} and {} entries for {n} block_out_channels",
                    raw.down_block_types.len(),
                    raw.up_block_types.len()
                ),
            );
        }
        if raw.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported("mid_block_type", format!("{:?}", raw.mid_block_type));
        }
        let cross_attention_dim = match &raw.cross_attention_dim {
            PerBlock::One(d) => *d,
            PerBlock::Each(v) => return unsupported("cross_attention_dim", format!("{v:?}")),
        };
        // diffusers' historical naming: `attention_head_dim` holds the number of heads unless
        // `num_attention_heads` is given.
        let heads = raw
            .num_attention_heads
            .as_ref()
            .unwrap_or(&raw.attention_head_dim)
            .resolve(n, "attention_head_dim", file)?;
        let layers = raw.layers_per_block.resolve(n, "layers_per_block", file)?;
        let depth =
            raw.transformer_layers_per_block
                .resolve(n, "transformer_layers_per_block", file)?;
        let attention = |kind: &str, down: bool| -> Result<bool> {
            match (kind, down) {
                ("CrossAttnDownBlock2D", true) | ("CrossAttnUpBlock2D", false) => Ok(true),
                ("DownBlock2D", true) | ("UpBlock2D", false) => Ok(false),
                _ => Err(Error::Unsupported(format!(
                    "{file}: {} = {kind}",
                    if down {
                        "down_block_types"
                    } else {
                        "up_block_types"
                    }
                ))),
            }
        };
        let mut down = Vec::with_capacity(n);
        for (i, kind) in raw.down_block_types.iter().enumerate() {
            let attn = attention(kind, true)?;
            down.push(BlockSpec {
                out_channels: raw.block_out_channels[i],
                transformer_layers: if attn { depth[i] } else { 0 },
                heads: heads[i],
                layers: layers[i],
            });
        }
        let mut up = Vec::with_capacity(n);
        for (i, kind) in raw.up_block_types.iter().enumerate() {
            let r = n - 1 - i;
            let attn = attention(kind, false)?;
            up.push(BlockSpec {
                out_channels: raw.block_out_channels[r],
                transformer_layers: if attn { depth[r] } else { 0 },
                heads: heads[r],
                layers: layers[r] + 1,
            });
        }
        if let Some(&c) = raw
            .block_out_channels
            .iter()
            .find(|c| raw.norm_num_groups == 0 || !c.is_multiple_of(raw.norm_num_groups))
        {
            return unsupported(
                "norm_num_groups",
                format!("{} does not divide {c} channels", raw.norm_num_groups),
            );
        }
        for (i, b) in down.iter().enumerate() {
            if b.transformer_layers > 0 && (b.heads == 0 || !b.out_channels.is_multiple_of(b.heads))
            {
                return unsupported(
                    "attention_head_dim",
                    format!(
                        "{} heads for {} channels in block {i}",
                        b.heads, b.out_channels
                    ),
                );
            }
        }
        let text_time = match raw.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => match (
                raw.addition_time_embed_dim,
                raw.projection_class_embeddings_input_dim,
            ) {
                (Some(t), Some(p)) => Some((t, p)),
                _ => {
                    return unsupported(
                        "addition_embed_type",
                        "text_time without addition_time_embed_dim and \
                         projection_class_embeddings_input_dim"
                            .into(),
                    );
                }
            },
            Some(other) => return unsupported("addition_embed_type", other.into()),
        };
        Ok(Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            flip_sin_to_cos: raw.flip_sin_to_cos,
            freq_shift: raw.freq_shift,
            mid_transformer_layers: depth[n - 1],
            mid_heads: heads[n - 1],
            down,
            up,
            groups: raw.norm_num_groups,
            eps: raw.norm_eps,
            cross_attention_dim,
            linear_projection: raw.use_linear_projection,
            sample_size: raw.sample_size,
            text_time,
        })
    }
}
