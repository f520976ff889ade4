//! The reward heads on frozen unit image embeddings `x` (and, when a head reads the prompt, its
//! unit text embedding `t`, entering as the features `[x, x * t]`):
//!
//! - linear: `r = w . phi`;
//! - MLP: `r = w2 . gelu(W1 phi + b1)`;
//! - PAL-A ideal point: a shared MLP `f(phi) = W2 gelu(W1 phi + b1) + b2`, prototypes `P`
//!   (`[K, d']`), a user's mixture `a = softmax(user_logits) P`, `r = -||f(phi) - a||^2`;
//! - VPL (in [`super::vpl`]).
//!
//! All are burn modules with PyTorch's layouts (`nn.Linear` weights `[out, in]` in the files), so
//! a head file loads into the PyTorch reference modules of `tests/reference/make_personal_fixtures.py`
//! as is. Scores are differentiable: the same forward serves training and steering.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::noise::Rng;

/// `phi(x, t)`: the image embedding, and with a prompt its elementwise product with the
/// prompt's embedding (so a head can like different things for different prompts).
///
/// # Shapes
/// - x: `[n, d]`, t: `[n, d]`; output `[n, d]` or `[n, 2d]`
pub fn features(x: Tensor<2>, t: Option<Tensor<2>>) -> Tensor<2> {
    match t {
        Some(t) => {
            let xt = x.clone() * t;
            Tensor::cat(vec![x, xt], 1)
        }
        None => x,
    }
}

/// A trainable tensor from host values.
pub(crate) fn param<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// `n` values uniform in `[-bound, bound)`.
fn uniform(rng: &mut Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * bound)
        .collect()
}

/// A Linear initialised as torch's `nn.Linear` (weight and bias uniform in +-1/sqrt(input)),
/// from Tastebud's seeded generator: the same fit on every device.
pub(crate) fn linear(
    input: usize,
    output: usize,
    bias: bool,
    rng: &mut Rng,
    device: &Device,
) -> Linear {
    let bound = 1.0 / (input.max(1) as f32).sqrt();
    let weight = param(uniform(rng, input * output, bound), [input, output], device);
    let bias = bias.then(|| param(uniform(rng, output, bound), [output], device));
    Linear { weight, bias }
}

/// `r = w . phi`; with a population prior (`personalize pretrain --head linear`), `w` is the
/// prior's mean until the person's answers move it.
#[derive(Module, Debug)]
pub struct LinearHead {
    pub linear: Linear,
    pub prior: Option<LinearPrior>,
}

/// The population's prior over a person's `w`: `N(mean, U U^T + scale^2 I)`; see
/// [`super::prior`]. A person's head fitted under it keeps it, so refitting with more answers
/// starts from the population again, not from the person's last fit.
#[derive(Module, Debug)]
pub struct LinearPrior {
    /// `[input]`: the population's average taste.
    pub mean: Param<Tensor<1>>,
    /// `U`, `[input, rank]`: the directions people's tastes vary along, scaled by how much.
    pub factors: Param<Tensor<2>>,
    /// `[1]`: the spread in every other direction.
    pub scale: Param<Tensor<1>>,
}

impl LinearHead {
    /// Zero weights: before any answer every image scores the same.
    pub fn new(input: usize, device: &Device) -> Self {
        Self {
            linear: Linear {
                weight: param(vec![0.0; input], [input, 1], device),
                bias: None,
            },
            prior: None,
        }
    }

    /// A head of this shape with a rank-`rank` prior (zeros: loading fills it).
    pub fn with_prior(input: usize, rank: usize, device: &Device) -> Self {
        Self {
            prior: Some(LinearPrior {
                mean: param(vec![0.0; input], [input], device),
                factors: param(vec![0.0; input * rank], [input, rank], device),
                scale: param(vec![0.0], [1], device),
            }),
            ..Self::new(input, device)
        }
    }

    /// `[n, input] -> [n]`.
    pub fn forward(&self, phi: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        self.linear.forward(phi).reshape([n])
    }
}

/// `r = w2 . gelu(W1 phi + b1)`.
#[derive(Module, Debug)]
pub struct MlpHead {
    pub hidden: Linear,
    pub out: Linear,
}

impl MlpHead {
    pub fn new(input: usize, hidden: usize, rng: &mut Rng, device: &Device) -> Self {
        Self {
            hidden: linear(input, hidden, true, rng, device),
            out: linear(hidden, 1, false, rng, device),
        }
    }

    /// `[n, input] -> [n]`.
    pub fn forward(&self, phi: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        self.out
            .forward(gelu(self.hidden.forward(phi)))
            .reshape([n])
    }
}

/// PAL-A: a person is a point mixed from shared prototypes; images near it score high.
#[derive(Module, Debug)]
pub struct PalHead {
    pub hidden: Linear,
    pub projection: Linear,
    /// `[K, d']`.
    pub prototypes: Param<Tensor<2>>,
    /// `[K]`: the person's mixture, before softmax (zeros: the population's average).
    pub user_logits: Param<Tensor<1>>,
}

impl PalHead {
    pub fn new(
        input: usize,
        hidden: usize,
        output: usize,
        prototypes: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        let hidden_layer = linear(input, hidden, true, rng, device);
        let projection = linear(hidden, output, true, rng, device);
        // Prototypes start apart (standard normal, as PAL initialises them) so they can
        // specialise; the mixture starts uniform.
        Self {
            hidden: hidden_layer,
            projection,
            prototypes: param(
                rng.gaussian(prototypes * output),
                [prototypes, output],
                device,
            ),
            user_logits: param(vec![0.0; prototypes], [prototypes], device),
        }
    }

    pub fn prototype_count(&self) -> usize {
        self.prototypes.dims()[0]
    }

    /// `f(phi)`: `[n, input] -> [n, d']`.
    pub fn embed(&self, phi: Tensor<2>) -> Tensor<2> {
        self.projection.forward(gelu(self.hidden.forward(phi)))
    }

    /// The ideal points of users with mixture logits `logits` (`[u, K]` -> `[u, d']`).
    pub fn ideal_points(&self, logits: Tensor<2>) -> Tensor<2> {
        softmax(logits, 1).matmul(self.prototypes.val())
    }

    /// Scores for images whose users' ideal points are `points` (`[n, d']`, one row per image).
    pub fn score_against(&self, phi: Tensor<2>, points: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        let diff = self.embed(phi) - points;
        diff.powi_scalar(2).sum_dim(1).reshape([n]).neg()
    }

    /// This head's person: `[n, input] -> [n]`.
    pub fn forward(&self, phi: Tensor<2>) -> Tensor<1> {
        let [n, _] = phi.dims();
        let k = self.prototype_count();
        let point = self.ideal_points(self.user_logits.val().reshape([1, k]));
        let d = point.dims()[1];
        self.score_against(phi, point.expand([n, d]))
    }
}
