//! CLIP's text tower (`CLIPTextTransformer`): token + position embeddings, a causal
//! pre-norm transformer and a final LayerNorm; pooled at the end-of-text token.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::config::{Activation, ClipTextConfig};
use super::encoder::{ClipEncoder, EncoderDims};

#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
}

/// What the text tower returns for a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// `[batch, seq, hidden]`, after the final LayerNorm.
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`, the final-LayerNorm state at each prompt's end-of-text token.
    pub pooled: Tensor<2>,
}

impl ClipTextTransformer {
    pub fn new(c: &ClipTextConfig, activation: Activation, device: &Device) -> Self {
        Self {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(c.vocab_size, c.hidden_size).init(device),
                position_embedding: EmbeddingConfig::new(c.max_position_embeddings, c.hidden_size)
                    .init(device),
            },
            encoder: ClipEncoder::new(
                EncoderDims {
                    hidden: c.hidden_size,
                    intermediate: c.intermediate_size,
                    heads: c.num_attention_heads,
                    layers: c.num_hidden_layers,
                    eps: c.layer_norm_eps,
                    activation,
                },
                device,
            ),
            final_layer_norm: LayerNormConfig::new(c.hidden_size).with_epsilon(c.layer_norm_eps).init(device),
        }
    }

    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embedding.weight.dims()[0]
    }

    /// Runs the tower on token ids (already checked against the vocabulary and length).
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` with `seq <= max_position_embeddings`; `eos_index[b]` in `0..seq`
    pub fn forward(&self, ids: Tensor<2, Int>, eos_index: &[usize]) -> TextOutput {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = self.embeddings.position_embedding.weight.val().narrow(0, 0, seq);
        let x = self.embeddings.token_embedding.forward(ids) + positions.unsqueeze_dim::<3>(0);
        let x = self.encoder.forward(x, Some(causal_mask(seq, &device)), None);
        let hidden = x.dims()[2];
        let last_hidden_state = self.final_layer_norm.forward(x);
        let rows: Vec<i64> = eos_index.iter().enumerate().map(|(b, &e)| (b * seq + e) as i64).collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [batch]), &device);
        let pooled = last_hidden_state.clone().reshape([batch * seq, hidden]).select(0, rows);
        TextOutput { last_hidden_state, pooled }
    }
}

/// Additive causal mask `[1, 1, seq, seq]`: -inf above the diagonal.
fn causal_mask(seq: usize, device: &Device) -> Tensor<4> {
    let future = Tensor::<2, Bool>::triu_mask([seq, seq], 1, device);
    Tensor::<2>::zeros([seq, seq], device).mask_fill(future, f32::NEG_INFINITY).reshape([1, 1, seq, seq])
}
