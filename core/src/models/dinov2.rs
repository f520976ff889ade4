//! DINOv2 (transformers `Dinov2Model`): a ViT with a class token, LayerScale on both residual
//! branches and position embeddings interpolated (bicubic, as torch) to the input's patch
//! grid. Field names follow transformers, so hub checkpoints load unchanged.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};

use crate::models::packed::{Conv2d, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use crate::files::ModelFiles;
use crate::models::layers::{attention, linear3 as linear};
use crate::{Error, Result, weights};

/// `Dinov2Config` (transformers names and defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default = "d_true")]
    pub use_mask_token: bool,
    #[serde(default = "d_true")]
    pub apply_layernorm: bool,
    #[serde(default)]
    pub model_type: Option<String>,
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
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_act() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-6
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    14
}
fn d_channels() -> usize {
    3
}
fn d_true() -> bool {
    true
}

impl Dinov2Config {
    /// Refuses what this implementation does not have, naming the field.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        if let Some(t) = &self.model_type
            && t != "dinov2"
        {
            return Err(bad(format!("model_type `{t}` is not dinov2")));
        }
        if self.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act `{}` is not supported (gelu)",
                self.hidden_act
            )));
        }
        if !self.apply_layernorm {
            return Err(bad("apply_layernorm = false is not supported".into()));
        }
        if self.use_swiglu_ffn {
            return Err(bad("use_swiglu_ffn (ViT-g) is not supported".into()));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    pub projection: Conv2d,
}

#[derive(Module, Debug)]
pub struct Dinov2Embeddings {
    pub cls_token: Param<Tensor<3>>,
    /// Used only for masked pretraining; kept so checkpoints load without leftovers.
    pub mask_token: Option<Param<Tensor<2>>>,
    pub position_embeddings: Param<Tensor<3>>,
    pub patch_embeddings: PatchEmbeddings,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
}

#[derive(Module, Debug)]
pub struct SelfOutput {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct Dinov2Attention {
    pub attention: SelfAttention,
    pub output: SelfOutput,
}

#[derive(Module, Debug)]
pub struct LayerScale {
    pub lambda1: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct Dinov2Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct Dinov2Layer {
    pub norm1: LayerNorm,
    pub attention: Dinov2Attention,
    pub layer_scale1: LayerScale,
    pub norm2: LayerNorm,
    pub mlp: Dinov2Mlp,
    pub layer_scale2: LayerScale,
}

#[derive(Module, Debug)]
pub struct Dinov2Encoder {
    pub layer: Vec<Dinov2Layer>,
}

#[derive(Module, Debug)]
pub struct Dinov2Model {
    pub embeddings: Dinov2Embeddings,
    pub encoder: Dinov2Encoder,
    pub layernorm: LayerNorm,
    pub heads: usize,
    pub patch_size: usize,
}

/// Weight files of a transformers model folder, in order of preference.
pub const DINOV2_WEIGHTS: &[&str] = &["model.safetensors", "pytorch_model.bin"];

impl Dinov2Model {
    pub fn new(c: &Dinov2Config, device: &Device) -> Self {
        let d = c.hidden_size;
        let grid = c.image_size / c.patch_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o, bias| Linear::new(i, o, bias, device);
        let scale = || LayerScale {
            lambda1: Param::from_tensor(Tensor::ones([d], device)),
        };
        let mlp = (d as f64 * c.mlp_ratio) as usize;
        let layer = (0..c.num_hidden_layers)
            .map(|_| Dinov2Layer {
                norm1: norm(),
                attention: Dinov2Attention {
                    attention: SelfAttention {
                        query: lin(d, d, c.qkv_bias),
                        key: lin(d, d, c.qkv_bias),
                        value: lin(d, d, c.qkv_bias),
                    },
                    output: SelfOutput {
                        dense: lin(d, d, true),
                    },
                },
                layer_scale1: scale(),
                norm2: norm(),
                mlp: Dinov2Mlp {
                    fc1: lin(d, mlp, true),
                    fc2: lin(mlp, d, true),
                },
                layer_scale2: scale(),
            })
            .collect();
        Self {
            embeddings: Dinov2Embeddings {
                cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                mask_token: c
                    .use_mask_token
                    .then(|| Param::from_tensor(Tensor::zeros([1, d], device))),
                position_embeddings: Param::from_tensor(Tensor::zeros(
                    [1, grid * grid + 1, d],
                    device,
                )),
                patch_embeddings: PatchEmbeddings {
                    projection: Conv2d::new(
                        [c.num_channels, d],
                        c.patch_size,
                        c.patch_size,
                        0,
                        true,
                        device,
                    ),
                },
            },
            encoder: Dinov2Encoder { layer },
            layernorm: norm(),
            heads: c.num_attention_heads,
            patch_size: c.patch_size,
        }
    }

    /// Loads a transformers `Dinov2Model` folder (`config.json`, `model.safetensors` or
    /// `pytorch_model.bin`); weights are frozen (`no_grad`).
    pub fn from_files(files: &mut ModelFiles, device: &Device) -> Result<Self> {
        let config: Dinov2Config = files.json("config.json")?;
        config.validate(&files.label("config.json"))?;
        let name = files.first_of(DINOV2_WEIGHTS)?;
        let file = files.label(name);
        let bytes =
            crate::torch_pickle::convert_archive(&file, files.take(name).unwrap_or_default())?;
        // transformers saves the bare model's keys with or without the `dinov2.` prefix of
        // its task heads; only the bare model is used.
        let model = weights::load_remapped(
            Self::new(&config, device),
            &file,
            bytes,
            &["classifier."],
            &[("^dinov2\\.".to_string(), String::new())],
        )?;
        Ok(model.no_grad())
    }

    /// The class token after the final LayerNorm (transformers' `pooler_output`).
    ///
    /// # Shapes
    /// - pixels: `[batch, channels, height, width]`, sides multiples of the patch size
    /// - output: `[batch, hidden]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let [b, _, h, w] = pixels.dims();
        let patches = self.embeddings.patch_embeddings.projection.forward(pixels);
        let [_, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.embeddings.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1) + self.positions(h, w);
        let x = self.encoder.layer.iter().fold(x, |x, layer| {
            let a = &layer.attention;
            let y = layer.norm1.forward(x.clone());
            let y = attention(
                linear(&a.attention.query, y.clone()),
                linear(&a.attention.key, y.clone()),
                linear(&a.attention.value, y),
                self.heads,
            );
            let y =
                linear(&a.output.dense, y) * layer.layer_scale1.lambda1.val().reshape([1, 1, d]);
            let x = x + y;
            let y = layer.norm2.forward(x.clone());
            let y = linear(&layer.mlp.fc2, gelu(linear(&layer.mlp.fc1, y)));
            x + y * layer.layer_scale2.lambda1.val().reshape([1, 1, d])
        });
        let x = self.layernorm.forward(x);
        x.narrow(1, 0, 1).reshape([b, d])
    }

    /// Position embeddings for an `h x w` input: the trained grid resized bicubically (torch's
    /// `interpolate(mode="bicubic", align_corners=False)`) unless it already fits.
    fn positions(&self, h: usize, w: usize) -> Tensor<3> {
        let pos = self.embeddings.position_embeddings.val();
        let [_, n, d] = pos.dims();
        let grid = ((n - 1) as f64).sqrt().round() as usize;
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        if gh * gw == n - 1 && h == w {
            return pos;
        }
        let device = pos.device();
        let matrix = |out: usize| {
            Tensor::<2>::from_data(
                TensorData::new(bicubic_matrix(grid, out), [out, grid]),
                &device,
            )
        };
        let patch = pos
            .clone()
            .narrow(1, 1, n - 1)
            .reshape([grid, grid, d])
            .permute([2, 0, 1]);
        // [d, grid, grid] -> rows -> columns -> [gh * gw, d]
        let rows = matrix(gh)
            .unsqueeze_dim::<3>(0)
            .expand([d, gh, grid])
            .matmul(patch);
        let both = rows.matmul(
            matrix(gw)
                .transpose()
                .unsqueeze_dim::<3>(0)
                .expand([d, grid, gw]),
        );
        let patch = both.permute([1, 2, 0]).reshape([1, gh * gw, d]);
        Tensor::cat(vec![pos.narrow(1, 0, 1), patch], 1)
    }
}

/// `[out, input]` weights of torch's bicubic resize (A = -0.75, align_corners = False, edge
/// samples clamped) along one axis.
pub fn bicubic_matrix(input: usize, out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / out as f32;
    let mut m = vec![0.0f32; out * input];
    for i in 0..out {
        let src = (scale * (i as f32 + 0.5) - 0.5) as f64;
        let base = src.floor();
        let t = src - base;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, wgt) in weights.iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            m[i * input + j] += *wgt as f32;
        }
    }
    m
}
