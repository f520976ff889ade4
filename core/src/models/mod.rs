//! Model architectures, one folder (or file) per model family, and the small layers they share.

pub mod clip;
pub mod taesd;
pub mod vae;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor};

/// Weight files of a diffusers component folder, in order of preference.
pub const DIFFUSERS_WEIGHTS: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// A 3x3 convolution with padding 1, as diffusers' decoders use everywhere.
pub(crate) fn conv3(cin: usize, cout: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(bias)
        .init(device)
}

/// Nearest-neighbour upsampling by an integer factor (exact: each pixel repeated).
pub(crate) fn upsample_nearest(x: Tensor<4>, factor: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, factor, w, factor])
        .reshape([b, c, h * factor, w * factor])
}
