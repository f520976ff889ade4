//! CLIP's text tower (`CLIPTextTransformer`): token + position embeddings, a causal
//! pre-norm transformer and a final LayerNorm; pooled at the end-of-text token.
//!
//! The token embedding table stays in host memory (the CPU backend): a real one is 152 MB
//! (ViT-L) to 253 MB (bigG) in f32, more than the 128 MiB a WebGPU or lavapipe storage
//! binding may hold, and a prompt only needs 77 of its rows.

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
                token_embedding: EmbeddingConfig::new(c.vocab_size, c.hidden_size)
                    .init(&Device::flex()),
                position_embedding: EmbeddingConfig::new(c.max_position_embeddings, c.hidden_size)
                    .init(device),
            },
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
            final_layer_norm: LayerNormConfig::new(c.hidden_size)
                .with_epsilon(c.layer_norm_eps)
                .init(device),
        }
    }

    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embedding.weight.dims()[0]
    }

    /// Runs the tower on token ids (already checked against the vocabulary and length).
    ///
    /// # Shapes
    /// - ids: `batch` rows of `seq <= max_position_embeddings` ids; `eos_index[b]` in `0..seq`
    pub fn forward(&self, ids: &[Vec<u32>], eos_index: &[usize], device: &Device) -> TextOutput {
        let x = self.hidden_state(ids, self.encoder.layers.len(), device);
        self.finish(x, eos_index, device)
    }

    /// One pass giving both transformers' `hidden_states[-2]` (no final LayerNorm) and the
    /// usual outputs: SDXL conditions on the first and pools the second.
    pub fn forward_with_penultimate(
        &self,
        ids: &[Vec<u32>],
        eos_index: &[usize],
        device: &Device,
    ) -> (Tensor<3>, TextOutput) {
        let n = self.encoder.layers.len();
        let penultimate = self.hidden_state(ids, n.saturating_sub(1), device);
        let seq = penultimate.dims()[1];
        let last = self.encoder.forward_layers(
            penultimate.clone(),
            Some(causal_mask(seq, device)),
            n.saturating_sub(1)..n,
        );
        (penultimate, self.finish(last, eos_index, device))
    }

    /// Final LayerNorm and pooling at each prompt's end-of-text token.
    fn finish(&self, x: Tensor<3>, eos_index: &[usize], device: &Device) -> TextOutput {
        let [batch, seq, hidden] = x.dims();
        let last_hidden_state = self.final_layer_norm.forward(x);
        let rows: Vec<i64> = eos_index
            .iter()
            .enumerate()
            .map(|(b, &e)| (b * seq + e) as i64)
            .collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [batch]), device);
        let pooled = last_hidden_state
            .clone()
            .reshape([batch * seq, hidden])
            .select(0, rows);
        TextOutput {
            last_hidden_state,
            pooled,
        }
    }

    /// The state after the first `layers` encoder layers, without the final LayerNorm:
    /// transformers' `hidden_states[layers]` (SDXL conditions on `hidden_states[-2]`).
    pub fn hidden_state(&self, ids: &[Vec<u32>], layers: usize, device: &Device) -> Tensor<3> {
        let (batch, seq) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i)).collect();
        let table = &self.embeddings.token_embedding;
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(flat, [batch, seq]),
            &table.weight.device(),
        );
        let positions = self
            .embeddings
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, seq);
        // The table's backend computes in f32; the tower may compute in f16.
        let tokens = table.forward(ids).to_device(device).cast(positions.dtype());
        let x = tokens + positions.unsqueeze_dim::<3>(0);
        self.encoder
            .forward(x, Some(causal_mask(seq, device)), Some(layers))
    }
}

/// Additive causal mask `[1, 1, seq, seq]`: -inf above the diagonal.
fn causal_mask(seq: usize, device: &Device) -> Tensor<4> {
    // burn's `tril_mask` is true where a lower-triangular matrix is zero: the future tokens.
    let future = Tensor::<2, Bool>::tril_mask([seq, seq], 0, device);
    Tensor::<2>::zeros([seq, seq], device)
        .mask_fill(future, f32::NEG_INFINITY)
        .reshape([1, 1, seq, seq])
}
