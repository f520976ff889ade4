//! Layers the diffusers models share: 3x3 convolutions, nearest upsampling, GroupNorm, the
//! `ResnetBlock2D` (with or without a time embedding) and multi-head attention.

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::models::cpu_fused;
use crate::models::packed::{Conv2d, Linear};
use crate::profile::scope;

/// A 3x3 convolution with padding 1, as diffusers uses everywhere.
pub(crate) fn conv3(cin: usize, cout: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2d::new([cin, cout], 3, 1, 1, bias, device)
}

/// A 1x1 convolution with bias.
pub(crate) fn conv1(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2d::new([cin, cout], 1, 1, 0, true, device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// A GroupNorm layer's forward pass (profiled as `group_norm`).
pub(crate) fn apply_group_norm(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    scope("group_norm", &x.device(), || {
        cpu_fused::group_norm(x, norm, false).unwrap_or_else(|x| norm.forward(x))
    })
}

/// SiLU after a GroupNorm, as every ResnetBlock and the models' last layers apply them; one
/// pass on the CPU (profiled as `group_norm` and `silu` where they run apart).
#[allow(clippy::result_large_err)] // the input handed back when the fused kernel does not apply
pub(crate) fn group_norm_silu(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    match scope("group_norm+silu", &x.device(), || {
        cpu_fused::group_norm(x, norm, true)
    }) {
        Ok(y) => y,
        Err(x) => silu(apply_group_norm(norm, x)),
    }
}

/// SiLU (profiled as `silu`).
pub(crate) fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    scope("silu", &x.device(), || {
        cpu_fused::silu_tensor(x).unwrap_or_else(burn::tensor::activation::silu)
    })
}

/// GELU, erf form (profiled as `gelu`).
pub(crate) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    scope("gelu", &x.device(), || {
        cpu_fused::gelu_tensor(x).unwrap_or_else(burn::tensor::activation::gelu)
    })
}

/// Nearest-neighbour upsampling by an integer factor (exact: each pixel repeated).
pub(crate) fn upsample_nearest(x: Tensor<4>, factor: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    scope("upsample", &x.device(), || {
        let x = if factor == 2 {
            match cpu_fused::upsample_nearest2(x) {
                Ok(y) => return y,
                Err(x) => x,
            }
        } else {
            x
        };
        x.reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, factor, w, factor])
            .reshape([b, c, h * factor, w * factor])
    })
}

/// torch's `interpolate(mode="nearest", size=(h, w))`: output pixel i reads input
/// floor(i * in / out). The UNet needs it when a latent side is not a multiple of its
/// total downsampling, so a stride-2 level rounded up.
pub(crate) fn upsample_nearest_to(x: Tensor<4>, height: usize, width: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if height == 2 * h && width == 2 * w {
        return upsample_nearest(x, 2);
    }
    let device = x.device();
    let index = |out: usize, len: usize| {
        let scale = len as f32 / out as f32;
        let rows: Vec<i64> = (0..out)
            .map(|i| ((i as f32 * scale).floor() as i64).min(len as i64 - 1))
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(rows, [out]), &device)
    };
    x.select(2, index(height, h)).select(3, index(width, w))
}

/// Largest attention score matrix computed at once, in elements (64 MiB of f32): WebGPU caps
/// one storage binding at 128 MiB by default, and a 64x64-latent self-attention over five
/// heads would need 335 MB in one piece.
const MAX_SCORES: usize = 1 << 24;

/// Multi-head scaled dot-product attention, softmax(q k^T / sqrt(d)) v per head.
///
/// # Shapes
/// - q: `[batch, queries, heads * d]`, k and v: `[batch, keys, heads * d]`; output like q.
pub(crate) fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let device = q.device();
    scope("attention", &device, || {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(out) = super::cpu_attention::attention(&q, &k, &v, heads) {
            return out;
        }
        attention_heads(q, k, v, heads)
    })
}

pub(super) fn attention_heads(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let q = split(q, n) * (d as f64).powf(-0.5);
    let k_t = split(k, m).swap_dims(2, 3);
    let v = split(v, m);
    let chunk = (MAX_SCORES / (b * heads * m).max(1)).clamp(1, n);
    let attend = |q: Tensor<4>| softmax(q.matmul(k_t.clone()), 3).matmul(v.clone());
    let out = if chunk >= n {
        attend(q)
    } else {
        let parts = (0..n)
            .step_by(chunk)
            .map(|s| attend(q.clone().narrow(2, s, chunk.min(n - s))))
            .collect();
        Tensor::cat(parts, 2)
    };
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// A Linear layer applied to `[batch, tokens, features]` as one 2-D product (faster on the CPU
/// backend than burn's batched 3-D path).
pub(crate) fn linear3(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, n, c] = x.dims();
    let y = layer.forward(x.reshape([b * n, c]));
    let out = y.dims()[1];
    y.reshape([b, n, out])
}

/// diffusers' `ResnetBlock2D` (default time-shift, SiLU, output scale 1):
/// skip(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))).
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// `temb`: the time embedding's width, or `None` for the VAE's blocks that have none.
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        groups: usize,
        eps: f64,
        temb: Option<usize>,
        device: &Device,
    ) -> Self {
        Self {
            norm1: group_norm(groups, cin, eps, device),
            conv1: conv3(cin, cout, true, device),
            time_emb_proj: temb.map(|t| Linear::new(t, cout, true, device)),
            norm2: group_norm(groups, cout, eps, device),
            conv2: conv3(cout, cout, true, device),
            conv_shortcut: (cin != cout).then(|| conv1(cin, cout, device)),
        }
    }

    /// `temb`: `[batch, width]` after the block's caller applied nothing (SiLU happens here).
    pub(crate) fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(group_norm_silu(&self.norm1, x.clone()));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let [b, c] = [h.dims()[0], h.dims()[1]];
            h = h + proj.forward(silu(temb.clone())).reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(group_norm_silu(&self.norm2, h));
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        skip + h
    }
}
