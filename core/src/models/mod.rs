//! Model architectures, one folder (or file) per model family, and the layers they share.

pub mod bert;
pub mod blip_vit;
pub mod clip;
#[cfg(not(target_arch = "wasm32"))]
mod cpu_attention;
#[cfg(not(target_arch = "wasm32"))]
mod cpu_conv;
mod cpu_fused;
#[cfg(not(target_arch = "wasm32"))]
mod cpu_gemm;
#[cfg(not(target_arch = "wasm32"))]
mod cpu_linear;
pub mod dinov2;
pub(crate) mod layers;
pub mod packed;
pub mod taesd;
pub mod unet;
pub mod vae;

/// Weight files of a diffusers component folder, in order of preference.
pub const DIFFUSERS_WEIGHTS: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.gguf",
];
