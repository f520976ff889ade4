//! VPL (variational preference learning): a person is a latent `z`, inferred from their answered
//! pairs by an encoder as a Gaussian `q(z | pairs) = N(mean, exp(log_var))`; the reward reads the
//! image and `z`. Trained on a population (Bradley-Terry loss + `kl_weight * KL(q || N(0, I))`),
//! a new person needs no training: their pairs are encoded. The Gaussian's spread says how sure
//! the head is, which picks the next pair to ask about ([`VplHead::choose_pair`], BALD).
//!
//! - encoder: `h_i = gelu(E [winner_i, loser_i] + e)` per answered pair (ties carry no
//!   direction and are left out), averaged over the pairs, then `mean = M h + m`,
//!   `log_var = V h + v`; no pairs: the prior `N(0, I)`;
//! - reward: `r(x, z) = w . gelu(R [phi(x), z] + b)`.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use super::active::{PairChoice, most_informative_pair};
use super::heads::{linear, param};
use crate::noise::Rng;
use crate::{Result, read_f32};

/// The population model: encoder and latent-conditioned reward.
#[derive(Module, Debug)]
pub struct VplModel {
    pub encoder: Linear,
    pub mean: Linear,
    pub log_var: Linear,
    pub reward_hidden: Linear,
    pub reward_out: Linear,
}

impl VplModel {
    /// `dimension`: the embeddings'; `input`: the reward's features (`dimension`, or twice it
    /// with the prompt).
    pub fn new(
        dimension: usize,
        input: usize,
        hidden: usize,
        latent: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        Self {
            encoder: linear(2 * dimension, hidden, true, rng, device),
            mean: linear(hidden, latent, true, rng, device),
            log_var: linear(hidden, latent, true, rng, device),
            reward_hidden: linear(input + latent, hidden, true, rng, device),
            reward_out: linear(hidden, 1, false, rng, device),
        }
    }

    pub fn latent(&self) -> usize {
        self.mean.weight.dims()[1]
    }

    /// Users' posteriors from their answered pairs.
    ///
    /// # Shapes
    /// - winners, losers: `[users, pairs, dimension]`; mask: `[users, pairs]`, 1 for a pair
    ///   in the user's context (at least one per user)
    /// - output: mean and log-variance, `[users, latent]` each
    pub fn encode(
        &self,
        winners: Tensor<3>,
        losers: Tensor<3>,
        mask: Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let [u, p, d] = winners.dims();
        let pairs = Tensor::cat(vec![winners, losers], 2).reshape([u * p, 2 * d]);
        let h = gelu(self.encoder.forward(pairs));
        let hidden = h.dims()[1];
        let mask3 = mask.clone().reshape([u, p, 1]);
        let pooled = (h.reshape([u, p, hidden]) * mask3)
            .sum_dim(1)
            .reshape([u, hidden])
            / mask.sum_dim(1).clamp_min(1.0);
        (
            self.mean.forward(pooled.clone()),
            self.log_var.forward(pooled),
        )
    }

    /// `r(phi, z)`, one latent row per image: `[n, input]`, `[n, latent]` -> `[n]`.
    pub fn reward(&self, phi: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        let h = gelu(self.reward_hidden.forward(Tensor::cat(vec![phi, z], 1)));
        self.reward_out.forward(h).reshape([n])
    }
}

/// A person's latent: the encoder's Gaussian for their pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Posterior {
    pub mean: Vec<f32>,
    pub log_var: Vec<f32>,
}

impl Posterior {
    /// `N(0, I)`: what a head knows of someone who has answered nothing.
    pub fn prior(latent: usize) -> Self {
        Self {
            mean: vec![0.0; latent],
            log_var: vec![0.0; latent],
        }
    }

    /// `samples` draws `mean + exp(log_var / 2) eps`, row-major `[samples, latent]`.
    fn sample(&self, samples: usize, rng: &mut Rng) -> Vec<f32> {
        let eps = rng.gaussian(samples * self.mean.len());
        eps.chunks(self.mean.len())
            .flat_map(|e| {
                e.iter()
                    .zip(&self.mean)
                    .zip(&self.log_var)
                    .map(|((e, m), lv)| m + (0.5 * lv).exp() * e)
            })
            .collect()
    }
}

/// A fitted VPL head: the population model and one person's posterior.
#[derive(Module, Debug)]
pub struct VplHead {
    pub model: VplModel,
    /// The posterior's mean and log-variance, `[latent]` each (saved with the head).
    pub user_mean: Param<Tensor<1>>,
    pub user_log_var: Param<Tensor<1>>,
}

impl VplHead {
    /// The model with the prior as its person.
    pub fn new(model: VplModel, device: &Device) -> Self {
        let l = model.latent();
        Self {
            model,
            user_mean: param(vec![0.0; l], [l], device),
            user_log_var: param(vec![0.0; l], [l], device),
        }
    }

    /// The same model for another person (frozen: a person's head only scores).
    pub fn with_posterior(self, posterior: &Posterior, device: &Device) -> Self {
        let l = posterior.mean.len();
        Self {
            model: self.model,
            user_mean: param(posterior.mean.clone(), [l], device),
            user_log_var: param(posterior.log_var.clone(), [l], device),
        }
        .no_grad()
    }

    pub async fn posterior(&self) -> Result<Posterior> {
        Ok(Posterior {
            mean: read_f32(self.user_mean.val()).await?,
            log_var: read_f32(self.user_log_var.val()).await?,
        })
    }

    /// Scores at the posterior mean: `[n, input] -> [n]`.
    pub fn forward(&self, phi: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        let l = self.model.latent();
        let z = self.user_mean.val().reshape([1, l]).expand([n, l]);
        self.model.reward(phi, z)
    }

    /// The pair among `phi`'s candidates (`[n, input]`) whose answer is expected to tell the
    /// most about this person (BALD: `H(mean_s p_s) - mean_s H(p_s)` over `samples` latents),
    /// skipping pairs in `asked`. `None` with fewer than two candidates.
    pub async fn choose_pair(
        &self,
        phi: Tensor<2>,
        asked: &[(usize, usize)],
        samples: usize,
        seed: u64,
    ) -> Result<Option<PairChoice>> {
        let [n, input] = phi.dims();
        if n < 2 || samples == 0 {
            return Ok(None);
        }
        let posterior = self.posterior().await?;
        let l = posterior.mean.len();
        let z = posterior.sample(samples, &mut Rng::new(seed));
        let device = phi.device();
        let z = Tensor::<2>::from_data(burn::tensor::TensorData::new(z, [samples, l]), &device);
        // Every candidate under every sampled latent, in one batch.
        let phi_all = phi
            .reshape([1, n, input])
            .expand([samples, n, input])
            .reshape([samples * n, input]);
        let z_all = z
            .reshape([samples, 1, l])
            .expand([samples, n, l])
            .reshape([samples * n, l]);
        let r = read_f32(self.model.reward(phi_all, z_all)).await?;
        Ok(most_informative_pair(&r, samples, n, asked))
    }
}
