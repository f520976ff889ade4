//! CLIP configs, read from transformers' `config.json` (field names and defaults as in
//! `transformers.CLIPTextConfig` / `CLIPVisionConfig` / `CLIPConfig`).

use serde::Deserialize;

use crate::{Error, Result};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// OpenAI CLIP: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// OpenCLIP (SD 2.x, SDXL bigG): exact erf GELU.
    Gelu,
}

impl Activation {
    pub fn parse(name: &str, file: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(Error::BadJson {
                file: file.to_string(),
                reason: format!("hidden_act `{other}` is not supported (quick_gelu, gelu)"),
            }),
        }
    }
}

/// `CLIPTextConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_text_mlp")]
    pub intermediate_size: usize,
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// 2 in old configs, meaning "pool at the highest token id" (transformers' legacy rule).
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_vision_mlp")]
    pub intermediate_size: usize,
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

/// `CLIPConfig` (the two towers and the shared projection size).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d_projection")]
    pub projection_dim: usize,
    #[serde(default = "d_logit_scale")]
    pub logit_scale_init_value: f32,
}

impl ClipTextConfig {
    /// Checks what the architecture cannot take, naming the config file.
    pub fn validate(&self, file: &str) -> Result<()> {
        check_heads("text", self.hidden_size, self.num_attention_heads, file)?;
        Activation::parse(&self.hidden_act, file).map(|_| ())
    }
}

impl ClipVisionConfig {
    /// Checks what the architecture cannot take, naming the config file.
    pub fn validate(&self, file: &str) -> Result<()> {
        check_heads("vision", self.hidden_size, self.num_attention_heads, file)?;
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::BadJson {
                file: file.to_string(),
                reason: format!(
                    "vision image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            });
        }
        Activation::parse(&self.hidden_act, file).map(|_| ())
    }
}

impl ClipConfig {
    /// Checks both towers.
    pub fn validate(&self, file: &str) -> Result<()> {
        self.text_config.validate(file)?;
        self.vision_config.validate(file)
    }
}

fn check_heads(tower: &str, hidden: usize, heads: usize, file: &str) -> Result<()> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::BadJson {
            file: file.to_string(),
            reason: format!(
                "{tower} hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            ),
        });
    }
    Ok(())
}

fn d_vocab() -> usize {
    49408
}
fn d_text_hidden() -> usize {
    512
}
fn d_text_mlp() -> usize {
    2048
}
fn d_projection() -> usize {
    512
}
fn d_layers() -> usize {
    12
}
fn d_text_heads() -> usize {
    8
}
fn d_positions() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_eos() -> i64 {
    2
}
fn d_vision_hidden() -> usize {
    768
}
fn d_vision_mlp() -> usize {
    3072
}
fn d_vision_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_logit_scale() -> f32 {
    2.6592
}
