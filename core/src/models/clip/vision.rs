//! CLIP's vision tower (`CLIPVisionTransformer`): patch embedding, class token, positions,
//! pre-LayerNorm ("pre_layrnorm", sic, as upstream), the encoder, and the post-LayerNorm of
//! the class token.

use crate::models::packed::Conv2d;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use super::config::{Activation, ClipVisionConfig};
use super::encoder::{ClipEncoder, EncoderDims};

#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    pub class_embedding: Param<Tensor<1>>,
    pub patch_embedding: Conv2d,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: LayerNorm,
    pub image_size: usize,
}

impl ClipVisionTransformer {
    pub fn new(c: &ClipVisionConfig, activation: Activation, device: &Device) -> Self {
        let patches = (c.image_size / c.patch_size).pow(2);
        let norm = || {
            LayerNormConfig::new(c.hidden_size)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        Self {
            embeddings: ClipVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::zeros([c.hidden_size], device)),
                patch_embedding: Conv2d::new(
                    [c.num_channels, c.hidden_size],
                    c.patch_size,
                    c.patch_size,
                    0,
                    false,
                    device,
                ),
                position_embedding: EmbeddingConfig::new(patches + 1, c.hidden_size).init(device),
            },
            pre_layrnorm: norm(),
            encoder: ClipEncoder::new(
                EncoderDims::new(
                    c.hidden_size,
                    c.intermediate_size,
                    c.num_attention_heads,
                    c.num_hidden_layers,
                    c.layer_norm_eps,
                    activation,
                ),
                device,
            ),
            post_layernorm: norm(),
            image_size: c.image_size,
        }
    }

    /// The pooled (post-LayerNorm class token) output.
    ///
    /// # Shapes
    /// - pixels: `[batch, channels, image_size, image_size]`, normalised
    /// - output: `[batch, hidden]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let batch = pixels.dims()[0];
        let patches = self.embeddings.patch_embedding.forward(pixels); // [b, d, g, g]
        let [_, hidden, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, hidden, gh * gw]).swap_dims(1, 2);
        let class = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([batch, 1, hidden]);
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .unsqueeze_dim::<3>(0);
        let x = Tensor::cat(vec![class, patches], 1) + positions;
        let x = self
            .encoder
            .forward(self.pre_layrnorm.forward(x), None, None);
        let class_token = x.narrow(1, 0, 1).reshape([batch, hidden]);
        self.post_layernorm.forward(class_token)
    }
}
