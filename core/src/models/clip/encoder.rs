//! The pre-LayerNorm transformer shared by CLIP's text and vision towers
//! (`CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPEncoder` in transformers).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};

use crate::models::packed::Linear;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Device, Tensor};

use super::config::Activation;
use crate::models::layers::{gelu, linear3 as linear};
use crate::profile::scope;

/// Multi-head self-attention with q/k/v/out projections (all with bias).
#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl ClipAttention {
    pub fn new(hidden: usize, num_heads: usize, device: &Device) -> Self {
        let linear = || Linear::new(hidden, hidden, true, device);
        Self {
            q_proj: linear(),
            k_proj: linear(),
            v_proj: linear(),
            out_proj: linear(),
            num_heads,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`; mask: additive `[1, 1, seq, seq]`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let heads = |t: Tensor<3>| {
            t.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        // transformers scales q before the product.
        let q = heads(linear(&self.q_proj, x.clone()) * (head_dim as f64).powf(-0.5));
        let k = heads(linear(&self.k_proj, x.clone()));
        let v = heads(linear(&self.v_proj, x));
        let out = scope("attention", &q.device(), || {
            let mut scores = q.matmul(k.swap_dims(2, 3));
            if let Some(mask) = mask {
                scores = scores + mask;
            }
            softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([batch, seq, hidden])
        });
        linear(&self.out_proj, out)
    }
}

/// fc1 -> activation -> fc2.
#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl ClipMlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = linear(&self.fc1, x);
        let h = match self.activation {
            Activation::QuickGelu => scope("gelu", &h.device(), || h.clone() * sigmoid(h * 1.702)),
            Activation::Gelu => gelu(h),
        };
        linear(&self.fc2, h)
    }
}

/// One pre-norm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

/// Sizes of one tower's encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub activation: Activation,
}

impl EncoderDims {
    /// From a tower config's `hidden_size`, `intermediate_size`, `num_attention_heads`,
    /// `num_hidden_layers` and `layer_norm_eps`.
    pub fn new(
        hidden: usize,
        intermediate: usize,
        heads: usize,
        layers: usize,
        eps: f64,
        activation: Activation,
    ) -> Self {
        Self {
            hidden,
            intermediate,
            heads,
            layers,
            eps,
            activation,
        }
    }
}

impl ClipEncoder {
    pub fn new(d: EncoderDims, device: &Device) -> Self {
        let norm = || {
            LayerNormConfig::new(d.hidden)
                .with_epsilon(d.eps)
                .init(device)
        };
        let layers = (0..d.layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention::new(d.hidden, d.heads, device),
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: Linear::new(d.hidden, d.intermediate, true, device),
                    fc2: Linear::new(d.intermediate, d.hidden, true, device),
                    activation: d.activation,
                },
                layer_norm2: norm(),
            })
            .collect();
        Self { layers }
    }

    /// Runs the first `depth` layers (all of them when `depth` is None).
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4>>,
        depth: Option<usize>,
    ) -> Tensor<3> {
        self.forward_layers(x, mask, 0..depth.unwrap_or(self.layers.len()))
    }

    /// Runs only the layers in `range` (to continue from a state taken part-way).
    pub fn forward_layers(
        &self,
        mut x: Tensor<3>,
        mask: Option<Tensor<4>>,
        range: std::ops::Range<usize>,
    ) -> Tensor<3> {
        for layer in
            &self.layers[range.start.min(self.layers.len())..range.end.min(self.layers.len())]
        {
            let norm =
                |n: &LayerNorm, x: Tensor<3>| scope("layer_norm", &x.device(), || n.forward(x));
            let h = layer
                .self_attn
                .forward(norm(&layer.layer_norm1, x.clone()), mask.clone());
            x = x + h;
            let h = layer.mlp.forward(norm(&layer.layer_norm2, x.clone()));
            x = x + h;
        }
        x
    }
}
