//! A population prior for linear heads (empirical Bayes). People's linear heads, fitted one by
//! one on a population's answers, give a Gaussian over a new person's weights:
//! `w ~ N(mean, U U^T + scale^2 I)`, with `mean` their average, `U` their top `rank` principal
//! directions scaled by their spread, and `scale^2` the remaining variance per dimension.
//!
//! A person's head is then the MAP under that prior instead of under an isotropic L2: written
//! `w = mean + U a + scale b` with `a, b ~ N(0, I)`, the joint MAP over `(a, b)` is the MAP over
//! `w`, so fitting is Adam on `(a, b)` from zero (the prior's mean: the population's taste, also
//! what a person with no answers gets) on the summed Bradley-Terry loss plus
//! `(|a|^2 + |b|^2) / 2`, divided by the number of pairs. It keeps the population's head start
//! of PAL/VPL with few answers and keeps learning what is only this person's, as a linear head.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::fit::{FitConfig, MIN_PAIRS, Pairs, adam, bradley_terry_loss, fit_linear};
use super::heads::{LinearHead, LinearPrior, param};
use crate::{Error, Result, read_f32};

/// A prior's values on the host: `mean` `[input]`, `factors` `[input, rank]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorValues {
    pub mean: Vec<f32>,
    pub factors: Vec<f32>,
    pub rank: usize,
    pub scale: f32,
}

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// `n x n` matrix by cyclic Jacobi rotations, largest eigenvalue first.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= 1e-30 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Numerical Recipes' conventions).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = (0..n)
        .flat_map(|row| order.iter().map(move |&col| (row, col)))
        .map(|(row, col)| v[row * n + col])
        .collect();
    (values, vectors)
}

impl PriorValues {
    /// The prior of `rank` from people's weights (each `[input]`; at least two people).
    pub fn from_heads(heads: &[Vec<f32>], rank: usize) -> Result<Self> {
        let m = heads.len();
        let input = heads.first().map_or(0, Vec::len);
        if m < 2 || input == 0 {
            return Err(Error::argument(
                "preferences",
                format!(
                    "{m} people with at least {MIN_PAIRS} answered pairs; a linear prior needs \
                     two or more"
                ),
            ));
        }
        let mean: Vec<f64> = (0..input)
            .map(|k| heads.iter().map(|h| f64::from(h[k])).sum::<f64>() / m as f64)
            .collect();
        let centred: Vec<Vec<f64>> = heads
            .iter()
            .map(|h| {
                h.iter()
                    .zip(&mean)
                    .map(|(&w, mu)| f64::from(w) - mu)
                    .collect()
            })
            .collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        // The people x people Gram matrix: its eigenvectors give the principal directions
        // (C^T v / sqrt(lambda)) without an input x input covariance.
        let gram: Vec<f64> = (0..m * m)
            .map(|ij| dot(&centred[ij / m], &centred[ij % m]))
            .collect();
        let (values, vectors) = symmetric_eigen(gram, m);
        let rank = rank.clamp(1, m - 1);
        let mut factors = vec![0.0f32; input * rank];
        for c in 0..rank {
            for k in 0..input {
                let u: f64 = (0..m).map(|i| centred[i][k] * vectors[i * m + c]).sum();
                factors[k * rank + c] = (u / (m as f64).sqrt()) as f32;
            }
        }
        let total: f64 = centred.iter().map(|c| dot(c, c)).sum();
        let kept: f64 = values[..rank].iter().map(|v| v.max(0.0)).sum();
        let scale = ((total - kept).max(0.0) / (m * input) as f64).sqrt() as f32;
        Ok(Self {
            mean: mean.into_iter().map(|v| v as f32).collect(),
            factors,
            rank,
            scale,
        })
    }

    /// A base head: scores by the mean, carries the prior.
    pub fn into_head(self, device: &Device) -> LinearHead {
        let input = self.mean.len();
        LinearHead {
            linear: Linear {
                weight: param(self.mean.clone(), [input, 1], device),
                bias: None,
            },
            prior: Some(LinearPrior {
                mean: param(self.mean, [input], device),
                factors: param(self.factors, [input, self.rank], device),
                scale: param(vec![self.scale], [1], device),
            }),
        }
    }
}

/// A linear prior of `rank` from a population's pairs (`user` set per record): each person's
/// linear head fitted with `fit` (people with fewer than [`MIN_PAIRS`] answers are left out).
pub async fn pretrain_linear(
    pairs: &Pairs,
    rank: usize,
    fit: &FitConfig,
    device: &Device,
) -> Result<LinearHead> {
    let mut heads = vec![];
    for user in 0..pairs.user_names.len() {
        let mine: Vec<usize> = (0..pairs.len())
            .filter(|&i| pairs.users[i] == user)
            .collect();
        let theirs = pairs.select(&mine);
        if mine.len() < MIN_PAIRS || theirs.target.iter().all(|&t| t == 0.5) {
            continue;
        }
        heads.push(read_f32(fit_linear(&theirs, fit, device)?.linear.weight.val()).await?);
    }
    Ok(PriorValues::from_heads(&heads, rank)?.into_head(device))
}

/// The coefficients a person's fit moves: `w = mean + U a + scale b`.
#[derive(Module, Debug)]
struct Coefficients {
    a: Param<Tensor<1>>,
    b: Param<Tensor<1>>,
}

/// A person's linear head under `base`'s prior (a population base, or a person's head fitted
/// under it; MAP; with no pairs, the prior's mean). `config`'s
/// steps and learning rate are used; its `l2` is not (the prior replaces it).
pub fn fit_with_prior(
    base: &LinearHead,
    pairs: &Pairs,
    config: &FitConfig,
    device: &Device,
) -> Result<LinearHead> {
    let Some(prior) = &base.prior else {
        return Err(Error::argument(
            "base",
            "this linear head has no population prior (`tastebud personalize pretrain --head \
             linear`)",
        ));
    };
    let [input, rank] = prior.factors.val().dims();
    let mean = prior.mean.val();
    let weight = |c: &Coefficients| {
        mean.clone()
            + prior
                .factors
                .val()
                .matmul(c.a.val().reshape([rank, 1]))
                .reshape([input])
            + c.b.val() * prior.scale.val()
    };
    let coefficients = if pairs.is_empty() {
        Coefficients {
            a: param(vec![0.0; rank], [rank], device),
            b: param(vec![0.0; input], [input], device),
        }
    } else {
        let (fa, fb) = pairs.features(device);
        let y = pairs.targets(device);
        let n = pairs.len() as f64;
        adam(
            Coefficients {
                a: param(vec![0.0; rank], [rank], device),
                b: param(vec![0.0; input], [input], device),
            },
            config.steps,
            config.lr,
            |c, _| {
                let w = weight(c).reshape([input, 1]);
                let score = |f: &Tensor<2>| f.clone().matmul(w.clone()).reshape([pairs.len()]);
                let a2 = c.a.val().powi_scalar(2).sum();
                let b2 = c.b.val().powi_scalar(2).sum();
                bradley_terry_loss(score(&fa), score(&fb), y.clone()) + (a2 + b2) / (2.0 * n)
            },
        )
    };
    let w = weight(&coefficients).reshape([input, 1]);
    Ok(LinearHead {
        linear: Linear {
            weight: Param::from_tensor(w.detach()),
            bias: None,
        },
        prior: Some(LinearPrior {
            mean: prior.mean.clone(),
            factors: prior.factors.clone(),
            scale: prior.scale.clone(),
        }),
    }
    .no_grad())
}

#[cfg(test)]
mod tests {
    use super::symmetric_eigen;

    #[test]
    fn jacobi_finds_a_known_spectrum() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, eigenvectors (1, 1) and (1, -1) / sqrt 2.
        let (values, vectors) = symmetric_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        assert!((values[0] - 3.0).abs() < 1e-12 && (values[1] - 1.0).abs() < 1e-12);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vectors[0].abs() - h).abs() < 1e-12 && (vectors[2].abs() - h).abs() < 1e-12);
        assert!((vectors[0] * vectors[2] - 0.5).abs() < 1e-12);
    }
}
