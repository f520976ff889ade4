//! Which pair to ask about next, by BALD: the pair whose answer is expected to tell the most
//! about the person, `H(E[p]) - E[H(p)]` with `p = sigmoid(margin)` over the head's uncertainty.
//!
//! - a linear head's uncertainty is its Laplace posterior, the Gaussian approximation of the
//!   L2-regularised Bradley-Terry posterior it was fitted under: `w ~ N(w_fit, H^-1)` with
//!   `H = n l2 I + sum_i p_i (1 - p_i) d_i d_i^T` over the answered pairs' feature differences
//!   `d_i` (the fit minimises the mean loss plus `l2 / 2 |w|^2`, i.e. `n` times that in total);
//!   a candidate pair's margin is then `N(w . d, d^T H^-1 d)`. `H` is only ever used through
//!   Woodbury's identity, so the cost grows with the answered pairs, not the dimension. A head
//!   fitted under a population prior ([`super::prior`]) has its posterior over `(a, b)`
//!   instead (`w = mean + U a + scale b`, prior `N(0, I)`): the same formulas with features
//!   `[U^T d, scale d]` and unit prior precision;
//! - a VPL head's is its latent posterior ([`super::vpl::VplHead::choose_pair`]).

use burn::tensor::Device;
use serde::Serialize;

use super::fit::Pairs;
use super::heads::features;
use super::{HeadModel, PersonalHead, unit_rows};
use crate::noise::Rng;
use crate::{Error, Result, read_f32};

/// The pair to ask about next and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairChoice {
    /// Indices into the candidates.
    pub first: usize,
    pub second: usize,
    /// BALD: the expected information (nats) the answer gives about the person.
    pub information: f32,
    /// The head's current belief that `first` is preferred.
    pub p_first: f32,
}

fn entropy(p: f64) -> f64 {
    let h = |q: f64| if q > 0.0 { -q * q.ln() } else { 0.0 };
    h(p) + h(1.0 - p)
}

fn sigmoid(m: f64) -> f64 {
    1.0 / (1.0 + (-m).exp())
}

/// BALD from samples of one pair's margin: (information, mean probability).
fn information(margins: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut p_sum, mut h_sum, mut n) = (0.0, 0.0, 0usize);
    for m in margins {
        let p = sigmoid(m);
        p_sum += p;
        h_sum += entropy(p);
        n += 1;
    }
    let n = n.max(1) as f64;
    (entropy(p_sum / n) - h_sum / n, p_sum / n)
}

/// The unasked pair `(i, j)`, `i < j < n`, with the most information under `margin_samples`.
fn best_pair<I: Iterator<Item = f64>>(
    n: usize,
    asked: &[(usize, usize)],
    mut margin_samples: impl FnMut(usize, usize) -> I,
) -> Option<PairChoice> {
    let mut best: Option<PairChoice> = None;
    for i in 0..n {
        for j in i + 1..n {
            if asked.contains(&(i, j)) || asked.contains(&(j, i)) {
                continue;
            }
            let (info, p) = information(margin_samples(i, j));
            if best.as_ref().is_none_or(|b| info as f32 > b.information) {
                best = Some(PairChoice {
                    first: i,
                    second: j,
                    information: info as f32,
                    p_first: p as f32,
                });
            }
        }
    }
    best
}

/// BALD from rewards `r` under `samples` draws of the head (`[samples, n]`, row-major): the
/// margin of `(i, j)` in draw `s` is `r[s][i] - r[s][j]`.
pub fn most_informative_pair(
    r: &[f32],
    samples: usize,
    n: usize,
    asked: &[(usize, usize)],
) -> Option<PairChoice> {
    best_pair(n, asked, |i, j| {
        (0..samples).map(move |s| f64::from(r[s * n + i] - r[s * n + j]))
    })
}

/// The prior a linear head was fitted under.
#[derive(Debug, Clone, Copy)]
pub enum LinearPriorShape<'a> {
    /// `N(0, I / (n l2))` (an L2 penalty on the mean loss).
    Isotropic { l2: f32 },
    /// A population prior: `factors` `[input, rank]` row-major, and `scale`.
    Population {
        factors: &'a [f32],
        rank: usize,
        scale: f32,
    },
}

/// A linear head's Laplace posterior, kept in Woodbury form.
#[derive(Debug, Clone)]
pub struct LaplacePosterior {
    weights: Vec<f64>,
    /// The prior precision in the posterior's coordinates (`n l2`, or 1 under a population
    /// prior).
    precision: f64,
    /// Under a population prior: `U` (`[input, rank]`) and `scale`, mapping features `d` to the
    /// coordinates `[U^T d, scale d]`.
    population: Option<(Vec<f64>, usize, f64)>,
    /// Rows `sqrt(p_i (1 - p_i)) d_i`, `[n, d]`.
    scaled: Vec<Vec<f64>>,
    /// Cholesky factor (lower) of `precision I + scaled scaled^T`, `[n, n]`.
    cholesky: Vec<Vec<f64>>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl LaplacePosterior {
    /// From the fitted weights, the answered pairs' feature differences (`phi(a) - phi(b)`)
    /// and the prior of the fit.
    pub fn new(weights: &[f32], differences: &[Vec<f32>], prior: LinearPriorShape) -> Self {
        let weights: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
        let n = differences.len();
        let (precision, population) = match prior {
            // The prior alone when nothing was answered (or l2 is 0: keep it proper).
            LinearPriorShape::Isotropic { l2 } => {
                ((n.max(1) as f64 * f64::from(l2)).max(1e-6), None)
            }
            LinearPriorShape::Population {
                factors,
                rank,
                scale,
            } => (
                1.0,
                Some((
                    factors.iter().map(|&v| f64::from(v)).collect(),
                    rank,
                    f64::from(scale),
                )),
            ),
        };
        let mut posterior = Self {
            weights,
            precision,
            population,
            scaled: vec![],
            cholesky: vec![],
        };
        let scaled: Vec<Vec<f64>> = differences
            .iter()
            .map(|d| {
                let d: Vec<f64> = d.iter().map(|&v| f64::from(v)).collect();
                let p = sigmoid(dot(&posterior.weights, &d));
                let c = (p * (1.0 - p)).sqrt();
                posterior.coordinates(&d).iter().map(|v| v * c).collect()
            })
            .collect();
        let mut cholesky = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in 0..=i {
                let sum = dot(&scaled[i], &scaled[j]) + if i == j { precision } else { 0.0 }
                    - dot(&cholesky[i][..j], &cholesky[j][..j]);
                cholesky[i][j] = if i == j {
                    sum.max(1e-300).sqrt()
                } else {
                    sum / cholesky[j][j]
                };
            }
        }
        posterior.scaled = scaled;
        posterior.cholesky = cholesky;
        posterior
    }

    /// Features in the posterior's coordinates: `d`, or `[U^T d, scale d]` under a population
    /// prior.
    fn coordinates(&self, d: &[f64]) -> Vec<f64> {
        match &self.population {
            None => d.to_vec(),
            Some((factors, rank, scale)) => (0..*rank)
                .map(|c| {
                    d.iter()
                        .enumerate()
                        .map(|(k, v)| v * factors[k * rank + c])
                        .sum()
                })
                .chain(d.iter().map(|v| v * scale))
                .collect(),
        }
    }

    /// `(precision I + S S^T)^-1 v` by the Cholesky factor.
    fn solve(&self, v: &[f64]) -> Vec<f64> {
        let n = v.len();
        let l = &self.cholesky;
        let mut y = vec![0.0; n];
        for i in 0..n {
            y[i] = (v[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            x[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
        }
        x
    }

    /// The pair among `candidates` (features, `[n][input]`) whose answer is expected to tell
    /// the most, from `samples` standard-normal draws shared by every pair (seeded).
    pub fn choose_pair(
        &self,
        candidates: &[Vec<f32>],
        asked: &[(usize, usize)],
        samples: usize,
        seed: u64,
    ) -> Option<PairChoice> {
        let n = candidates.len();
        let phi: Vec<Vec<f64>> = candidates
            .iter()
            .map(|c| c.iter().map(|&v| f64::from(v)).collect())
            .collect();
        let means: Vec<f64> = phi.iter().map(|p| dot(&self.weights, p)).collect();
        let phi: Vec<Vec<f64>> = phi.iter().map(|p| self.coordinates(p)).collect();
        // K = Phi H^-1 Phi^T = (Phi Phi^T - (S Phi^T)^T M^-1 (S Phi^T)) / precision.
        let projected: Vec<Vec<f64>> = phi
            .iter()
            .map(|p| self.scaled.iter().map(|s| dot(s, p)).collect())
            .collect();
        let solved: Vec<Vec<f64>> = projected.iter().map(|v| self.solve(v)).collect();
        let k = |i: usize, j: usize| {
            (dot(&phi[i], &phi[j]) - dot(&projected[i], &solved[j])) / self.precision
        };
        let diag: Vec<f64> = (0..n).map(|i| k(i, i)).collect();
        let eps: Vec<f64> = Rng::new(seed)
            .gaussian(samples.max(1))
            .into_iter()
            .map(f64::from)
            .collect();
        best_pair(n, asked, |i, j| {
            let m = means[i] - means[j];
            let s = (diag[i] + diag[j] - 2.0 * k(i, j)).max(0.0).sqrt();
            eps.iter()
                .map(move |e| m + s * e)
                .collect::<Vec<_>>()
                .into_iter()
        })
    }
}

/// Feature rows `phi(unit(x), t)` on the host.
fn host_features(rows: &[Vec<f32>], context: Option<&[f32]>) -> Vec<Vec<f32>> {
    let unit = |v: &[f32]| -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter()
            .map(|x| if n > 0.0 { x / n } else { 0.0 })
            .collect()
    };
    let t = context.map(unit);
    rows.iter()
        .map(|r| {
            let x = unit(r);
            match &t {
                Some(t) => x
                    .iter()
                    .copied()
                    .chain(x.iter().zip(t).map(|(a, b)| a * b))
                    .collect(),
                None => x,
            }
        })
        .collect()
}

/// The next pair of `candidates` (embeddings) to ask the person whose answers are `pairs`
/// about: by the linear head's Laplace posterior (fitted with `l2`; `None`: the head's own,
/// else the fit's default), or by a VPL head's latent posterior for these pairs. Other heads
/// have no uncertainty to ask by.
#[allow(clippy::too_many_arguments)]
pub async fn choose_next(
    head: &PersonalHead,
    pairs: &Pairs,
    candidates: &[Vec<f32>],
    context: Option<&[f32]>,
    asked: &[(usize, usize)],
    l2: Option<f32>,
    samples: usize,
    seed: u64,
    device: &Device,
) -> Result<Option<PairChoice>> {
    let d = head.config.dimension;
    if let Some(i) = candidates.iter().position(|c| c.len() != d) {
        return Err(Error::argument(
            format!("candidate {i}"),
            format!("dimension {}; the head reads {d}", candidates[i].len()),
        ));
    }
    if head.config.context != context.is_some() {
        return Err(Error::argument(
            "prompt",
            if head.config.context {
                "this head reads the prompt: give its embedding"
            } else {
                "this head does not read the prompt"
            },
        ));
    }
    match &head.model {
        HeadModel::Linear(linear) => {
            let weights = read_f32(linear.linear.weight.val()).await?;
            let n = pairs.len();
            let a: Vec<Vec<f32>> = pairs
                .a
                .chunks(pairs.dimension.max(1))
                .map(<[f32]>::to_vec)
                .collect();
            let b: Vec<Vec<f32>> = pairs
                .b
                .chunks(pairs.dimension.max(1))
                .map(<[f32]>::to_vec)
                .collect();
            let mut differences = Vec::with_capacity(n);
            for i in 0..n {
                let t = pairs.context.as_deref().map(|c| &c[i * d..(i + 1) * d]);
                let fa = host_features(std::slice::from_ref(&a[i]), t);
                let fb = host_features(std::slice::from_ref(&b[i]), t);
                differences.push(fa[0].iter().zip(&fb[0]).map(|(x, y)| x - y).collect());
            }
            let l2 = l2
                .or(head.config.l2)
                .unwrap_or(super::fit::FitConfig::default().l2);
            let factors;
            let prior = match &linear.prior {
                None => LinearPriorShape::Isotropic { l2 },
                Some(p) => {
                    factors = read_f32(p.factors.val()).await?;
                    LinearPriorShape::Population {
                        factors: &factors,
                        rank: p.factors.val().dims()[1],
                        scale: read_f32(p.scale.val()).await?[0],
                    }
                }
            };
            let posterior = LaplacePosterior::new(&weights, &differences, prior);
            Ok(posterior.choose_pair(&host_features(candidates, context), asked, samples, seed))
        }
        HeadModel::Vpl(vpl) => {
            let person = super::fit::fit_vpl(vpl.model.clone(), pairs, device).await?;
            let n = candidates.len();
            let x = unit_rows(candidates.iter().map(Vec::as_slice), n, d, device);
            let t = context.map(|c| unit_rows(std::iter::repeat_n(c, n), n, d, device));
            person
                .choose_pair(features(x, t), asked, samples, seed)
                .await
        }
        _ => Err(Error::argument(
            "head",
            format!(
                "a {} head has no uncertainty to ask by; use a linear or VPL head",
                head.config.kind.name()
            ),
        )),
    }
}
