//! BLIP's text encoder (`med.py`'s `BertModel` with `add_cross_attention`): BERT's post-norm
//! layers, each with a cross-attention block over image tokens between self-attention and the
//! feed-forward. Its embeddings have word and absolute position tables only (no token types).
//!
//! Fields carry the checkpoint's names except two Rust cannot spell: `LayerNorm` and `self`
//! (renamed on load by [`KEY_RENAMES`]).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};

use crate::models::packed::Linear;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::models::layers::{attention, linear3 as linear};
use crate::{Error, Result};

/// Checkpoint key -> field renames (regex, replacement).
pub const KEY_RENAMES: [(&str, &str); 2] = [
    ("\\.LayerNorm\\.", ".layer_norm."),
    ("\\.self\\.", ".self_attn."),
];

/// `med_config.json`: transformers' `BertConfig` (names and defaults) plus BLIP's
/// `encoder_width`. Fields this model does not use (dropouts, `type_vocab_size`) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Width of the image tokens cross-attention reads (BLIP sets it to the ViT's width).
    #[serde(default = "d_hidden")]
    pub encoder_width: usize,
}

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_act() -> String {
    "gelu".into()
}
fn d_positions() -> usize {
    512
}
fn d_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Refuses what this implementation does not have, naming the field.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        if self.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act `{}` is not supported (gelu)",
                self.hidden_act
            )));
        }
        if !self.add_cross_attention {
            return Err(bad(
                "add_cross_attention is false: BLIP's image-grounded encoder needs it".into(),
            ));
        }
        if let Some(t) = &self.position_embedding_type
            && t != "absolute"
        {
            return Err(bad(format!(
                "position_embedding_type `{t}` is not supported (absolute)"
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
}

/// A dense layer, then LayerNorm over it plus the residual.
#[derive(Module, Debug)]
pub struct DenseNorm {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl DenseNorm {
    fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm.forward(linear(&self.dense, x) + residual)
    }
}

#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_attn: BertSelfAttention,
    pub output: DenseNorm,
}

impl BertAttention {
    fn forward(&self, x: Tensor<3>, context: Tensor<3>, heads: usize) -> Tensor<3> {
        let s = &self.self_attn;
        let y = attention(
            linear(&s.query, x.clone()),
            linear(&s.key, context.clone()),
            linear(&s.value, context),
            heads,
        );
        self.output.forward(y, x)
    }
}

#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub crossattention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: DenseNorm,
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub heads: usize,
}

impl BertModel {
    pub fn new(c: &BertConfig, device: &Device) -> Self {
        let d = c.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| Linear::new(i, o, true, device);
        let attn = |kv: usize| BertAttention {
            self_attn: BertSelfAttention {
                query: lin(d, d),
                key: lin(kv, d),
                value: lin(kv, d),
            },
            output: DenseNorm {
                dense: lin(d, d),
                layer_norm: norm(),
            },
        };
        let layer = (0..c.num_hidden_layers)
            .map(|_| BertLayer {
                attention: attn(d),
                crossattention: attn(c.encoder_width),
                intermediate: BertIntermediate {
                    dense: lin(d, c.intermediate_size),
                },
                output: DenseNorm {
                    dense: lin(c.intermediate_size, d),
                    layer_norm: norm(),
                },
            })
            .collect();
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(c.vocab_size, d).init(device),
                position_embeddings: EmbeddingConfig::new(c.max_position_embeddings, d)
                    .init(device),
                layer_norm: norm(),
            },
            encoder: BertEncoder { layer },
            heads: c.num_attention_heads,
        }
    }

    /// Most tokens the position table holds.
    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.dims()[0]
    }

    /// Word plus position embeddings, normalised: the text side, independent of the image.
    /// Ids must be below the vocabulary size and at most [`BertModel::max_positions`] long.
    ///
    /// # Shapes
    /// - output: `[tokens, hidden]`
    pub fn embed(&self, ids: &[u32]) -> Tensor<2> {
        let e = &self.embeddings;
        let device = e.word_embeddings.weight.device();
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let words = e.word_embeddings.forward(ids);
        let [_, _, d] = words.dims();
        let positions = e.position_embeddings.weight.val().narrow(0, 0, n);
        e.layer_norm.forward(words.reshape([n, d]) + positions)
    }

    /// Hidden states of the text attending to itself and to the image tokens.
    ///
    /// Prompts come unpadded: BLIP pads to 35 and masks padding keys with -10000, whose weight
    /// `exp(-10000)` is exactly 0 in f32, so real tokens' states are the same without them.
    ///
    /// # Shapes
    /// - text: `[batch, tokens, hidden]` (from [`BertModel::embed`])
    /// - image: `[batch, image tokens, encoder_width]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, text: Tensor<3>, image: Tensor<3>) -> Tensor<3> {
        self.encoder.layer.iter().fold(text, |x, layer| {
            let x = layer.attention.forward(x.clone(), x, self.heads);
            let x = layer.crossattention.forward(x, image.clone(), self.heads);
            let y = gelu(linear(&layer.intermediate.dense, x.clone()));
            layer.output.forward(y, x)
        })
    }
}
