//! diffusers' `Transformer2DModel` as the SD UNets use it: GroupNorm, a 1x1-conv (SD 1.x) or
//! Linear (SD 2.x, SDXL) projection in, `BasicTransformerBlock`s (self-attention,
//! cross-attention on the text, GEGLU feed-forward, each pre-LayerNorm and residual), and the
//! projection back, added to the input.

use burn::module::Module;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig};

use crate::models::packed::{Conv2d, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::models::cpu_fused;
use crate::models::layers::{apply_group_norm, attention, conv1, group_norm, linear3};
use crate::profile::scope;

/// diffusers' `Attention` with bias-free q/k/v and a biased output projection.
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Vec<Linear>,
    heads: usize,
}

impl Attention {
    fn new(dim: usize, context_dim: usize, heads: usize, device: &Device) -> Self {
        let bare = |cin| Linear::new(cin, dim, false, device);
        Self {
            to_q: bare(dim),
            to_k: bare(context_dim),
            to_v: bare(context_dim),
            to_out: vec![Linear::new(dim, dim, true, device)],
            heads,
        }
    }

    /// `context`: the text for cross-attention, `None` for self-attention.
    fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let context = context.cloned().unwrap_or_else(|| x.clone());
        let q = linear3(&self.to_q, x);
        let k = linear3(&self.to_k, context.clone());
        let v = linear3(&self.to_v, context);
        let out = attention(q, k, v, self.heads);
        self.to_out.iter().fold(out, |t, l| linear3(l, t))
    }
}

/// `GEGLU`: one Linear to twice the inner width, value * gelu(gate).
#[derive(Module, Debug)]
pub struct Geglu {
    pub proj: Linear,
}

/// `FeedForward`'s `net`: [GEGLU, Dropout, Linear]; the dropout slot holds no weights.
#[derive(Module, Debug)]
pub enum FeedForwardLayer {
    Geglu(Geglu),
    Linear(Linear),
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub net: Vec<Option<FeedForwardLayer>>,
}

impl FeedForward {
    fn new(dim: usize, device: &Device) -> Self {
        let inner = dim * 4;
        Self {
            net: vec![
                Some(FeedForwardLayer::Geglu(Geglu {
                    proj: Linear::new(dim, inner * 2, true, device),
                })),
                None,
                Some(FeedForwardLayer::Linear(Linear::new(
                    inner, dim, true, device,
                ))),
            ],
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut x = x;
        for layer in self.net.iter().flatten() {
            x = match layer {
                FeedForwardLayer::Geglu(g) => {
                    let h = linear3(&g.proj, x);
                    scope("gelu", &h.device(), || {
                        cpu_fused::geglu(h).unwrap_or_else(|h| {
                            let inner = h.dims()[2] / 2;
                            h.clone().narrow(2, 0, inner) * gelu(h.narrow(2, inner, inner))
                        })
                    })
                }
                FeedForwardLayer::Linear(l) => linear3(l, x),
            };
        }
        x
    }
}

/// `BasicTransformerBlock` (layer-norm variant): x += attn1(norm1 x); x += attn2(norm2 x, text);
/// x += ff(norm3 x).
#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl TransformerBlock {
    fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let norm = |n: &LayerNorm, x: Tensor<3>| scope("layer_norm", &x.device(), || n.forward(x));
        let x = self.attn1.forward(norm(&self.norm1, x.clone()), None) + x;
        let x = self
            .attn2
            .forward(norm(&self.norm2, x.clone()), Some(context))
            + x;
        self.ff.forward(norm(&self.norm3, x.clone())) + x
    }
}

/// `proj_in`/`proj_out`: a 1x1 convolution (SD 1.x) or a Linear over channels (SD 2.x, SDXL).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Module, Debug)]
pub struct Transformer2D {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<TransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2D {
    /// `channels` = heads * head width; LayerNorm eps 1e-5, GroupNorm eps 1e-6 as in diffusers.
    pub(crate) fn new(
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        groups: usize,
        linear: bool,
        device: &Device,
    ) -> Self {
        let projection = || {
            if linear {
                Projection::Linear(Linear::new(channels, channels, true, device))
            } else {
                Projection::Conv(conv1(channels, channels, device))
            }
        };
        let norm = || LayerNormConfig::new(channels).init(device);
        Self {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: projection(),
            transformer_blocks: (0..depth)
                .map(|_| TransformerBlock {
                    norm1: norm(),
                    attn1: Attention::new(channels, channels, heads, device),
                    norm2: norm(),
                    attn2: Attention::new(channels, context_dim, heads, device),
                    norm3: norm(),
                    ff: FeedForward::new(channels, device),
                })
                .collect(),
            proj_out: projection(),
        }
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]`, context: `[batch, tokens, context_dim]`; output like x.
    pub(crate) fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let to_tokens = |t: Tensor<4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let to_image = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let normed = apply_group_norm(&self.norm, x.clone());
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(l) => linear3(l, to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_image(tokens)),
            Projection::Linear(l) => to_image(linear3(l, tokens)),
        };
        out + x
    }
}
