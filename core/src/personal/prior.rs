//! A population prior for linear heads (empirical Bayes): a Gaussian over a new person's weights,
//! `w ~ N(mean, U U^T + scale^2 I)`, learned from a population's answers ([`pretrain_linear`]).
//!
//! Two ways to make it ([`PriorMethod`]): `Heads`, people's linear heads fitted one by one, their
//! mean, top principal directions scaled by their spread and the remaining variance per
//! dimension as `scale^2`; and `Joint`, that prior's mean and directions refitted on everyone's
//! answers at once, each person `w_i = mean + U a_i` ([`joint_fit`]). Neither wins everywhere
//! (`tastebud personalize bench` and `bench-prior`, BENCHMARKS.md). Where people mix a few
//! shared tastes in a large space, each head fitted alone from tens of answers is mostly
//! estimation noise, which the principal directions, their scales and the rank inherit: `Heads`
//! lands 8.5 points short of an oracle that knows the hidden tastes, `Joint` 2.4 (1.2 with
//! twice the people). Where tastes span a small space and each person has a part of their own,
//! `Heads` at a high rank keeps directions for those parts that a low-rank joint fit leaves to
//! the isotropic residual.
//! `Auto` (the default) therefore asks the question it is for: it makes each candidate without a
//! fifth of the people and keeps the one whose fits on a few of their answers best predict
//! their others. Both shrink the mean toward zero by how much of it sampling noise explains
//! ([`shrink_mean`]).
//!
//! A person's head is then the MAP under that prior instead of under an isotropic L2: written
//! `w = mean + U a + scale b` with `a, b ~ N(0, I)`, the joint MAP over `(a, b)` is the MAP over
//! `w`, so fitting is Adam on `(a, b)` from zero (the prior's mean: the population's taste, also
//! what a person with no answers gets) on the summed Bradley-Terry loss plus
//! `(|a|^2 + |b|^2) / 2`, divided by the number of pairs. It keeps the population's head start
//! of PAL/VPL with few answers and keeps learning what is only this person's, as a linear head.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::fit::{FitConfig, MIN_PAIRS, Pairs, adam, bradley_terry_loss, fit_linear};
use super::heads::{LinearHead, LinearPrior, param};
use serde::Serialize;

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

/// The joint fit's ranks that [`PriorMethod::Auto`] tries (below the rank asked for).
const JOINT_RANKS: [usize; 3] = [2, 4, 8];
/// The joint fit's full-batch Adam.
const JOINT_STEPS: usize = 300;
const JOINT_LR: f64 = 0.02;
/// [`PriorMethod::Auto`] holds out every `HOLD_OUT_EVERY`th person, and needs at least
/// `MIN_HELD_OUT` of them to choose; each is fitted on up to `ASKED` of their answers (what a
/// new person gives) and scored on the rest.
const HOLD_OUT_EVERY: usize = 5;
const MIN_HELD_OUT: usize = 4;
const ASKED: usize = 20;

/// How a linear prior is made from a population's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriorMethod {
    /// The candidates below ([`PriorMethod::Heads`] at the rank asked for, [`PriorMethod::Joint`]
    /// at each of [`JOINT_RANKS`] under it), each made without a fifth of the people; the one
    /// whose fits on those people's first answers best predict their other answers is made
    /// again on everyone. With fewer than [`MIN_HELD_OUT`] people to hold out: `Heads`.
    #[default]
    Auto,
    /// Each person's head fitted alone; their mean and top principal directions.
    Heads,
    /// From `Heads`, the mean and directions refitted on everyone's answers at once.
    Joint,
}

impl PriorMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Heads => "heads",
            Self::Joint => "joint",
        }
    }
}

/// The population mean shrunk toward zero by the share of it that sampling noise explains
/// (positive-part James-Stein): `deviations` is `sum_i |w_i - mean|^2` over `people`. Where
/// tastes are signed and cancel (one likes red, another dislikes it), the mean of a few hundred
/// people is noise; as a prior's centre it pulls every new person's head toward it, which
/// costs more than a missing mean (`personalize bench-prior`, BENCHMARKS.md).
fn shrink_mean(mean: &mut [f32], deviations: f64, people: usize) {
    let norm: f64 = mean.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise = deviations / ((people.max(2) - 1) * people) as f64;
    let keep = if norm > 0.0 {
        (1.0 - noise / norm).max(0.0)
    } else {
        0.0
    };
    mean.iter_mut()
        .for_each(|v| *v = (f64::from(*v) * keep) as f32);
}

/// Each person's linear head fitted alone with `fit`, for the people of `pairs` (renumbered
/// `0..`; people with fewer than [`MIN_PAIRS`] answers or only ties are left out): their
/// weights, and each pair's person (`None`: left out).
pub async fn person_heads(
    pairs: &Pairs,
    fit: &FitConfig,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, Vec<Option<usize>>)> {
    let mut heads = vec![];
    let mut person = vec![None; pairs.len()];
    for user in 0..pairs.user_names.len() {
        let mine: Vec<usize> = (0..pairs.len())
            .filter(|&i| pairs.users[i] == user)
            .collect();
        let theirs = pairs.select(&mine);
        if mine.len() < MIN_PAIRS || theirs.target.iter().all(|&t| t == 0.5) {
            continue;
        }
        mine.iter().for_each(|&i| person[i] = Some(heads.len()));
        heads.push(read_f32(fit_linear(&theirs, fit, device)?.linear.weight.val()).await?);
    }
    Ok((heads, person))
}

/// A population's prior in the form a joint fit moves: `w_i = mean + U a_i` per person.
#[derive(Module, Debug)]
struct Population {
    mean: Param<Tensor<1>>,
    factors: Param<Tensor<2>>,
    coefficients: Param<Tensor<2>>,
}

impl Population {
    /// Each pair's score under its person's weights, `f . mean + (f U) . a_i`: `[n]`. (Never
    /// `[n, input]` rows of weights: the products with `U` are only `[n, rank]`.)
    fn scores(&self, features: &Tensor<2>, who: &Tensor<1, Int>) -> Tensor<1> {
        let [n, input] = features.dims();
        let shared = features
            .clone()
            .matmul(self.mean.val().reshape([input, 1]))
            .reshape([n]);
        let own = features.clone().matmul(self.factors.val())
            * self.coefficients.val().select(0, who.clone());
        shared + own.sum_dim(1).reshape([n])
    }
}

/// `who` as an index tensor.
fn people_index(who: &[usize], device: &Device) -> Tensor<1, Int> {
    let who: Vec<i64> = who.iter().map(|&u| u as i64).collect();
    let n = who.len();
    Tensor::<1, Int>::from_data(TensorData::new(who, [n]), device)
}

/// The hierarchical MAP over everyone's answers at once: `mean`, `U` and each person's `a_i`
/// (`a_i ~ N(0, I)`, unit Gaussians on the entries of `U` and `mean` too), from `init`'s mean
/// and principal directions. Taking the directions from people's heads fitted one by one
/// (`from_heads`) is noisy: with tens of answers in hundreds of dimensions most of each head
/// is estimation noise, which the principal directions and their scales inherit; fitted
/// jointly, the directions are those that explain the answers.
fn joint_fit(
    init: &PriorValues,
    people: usize,
    pairs: &Pairs,
    who: &[usize],
    device: &Device,
) -> Population {
    let (input, rank) = (init.mean.len(), init.rank);
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    let who = people_index(who, device);
    let start = Population {
        mean: param(init.mean.clone(), [input], device),
        factors: param(init.factors.clone(), [input, rank], device),
        coefficients: param(vec![0.0; people * rank], [people, rank], device),
    };
    let share = pairs.len() as f64 / people as f64;
    adam(start, JOINT_STEPS, JOINT_LR, |p, _| {
        let penalty = p.coefficients.val().powi_scalar(2).sum()
            + p.factors.val().powi_scalar(2).sum()
            + p.mean.val().powi_scalar(2).sum();
        bradley_terry_loss(p.scores(&fa, &who), p.scores(&fb, &who), y.clone()) * share
            + penalty / (2.0 * people as f64)
    })
}

/// The prior `method` (not `Auto`) makes at `rank` from `heads` (each person's own fit) and
/// their answers `pairs` (`who`: each pair's person, an index into `heads`).
async fn make_prior(
    method: PriorMethod,
    rank: usize,
    heads: &[Vec<f32>],
    pairs: &Pairs,
    who: &[usize],
    device: &Device,
) -> Result<PriorValues> {
    let mut prior = PriorValues::from_heads(heads, rank)?;
    let deviations: f64 = if method == PriorMethod::Joint {
        let population = joint_fit(&prior, heads.len(), pairs, who, device);
        prior.mean = read_f32(population.mean.val()).await?;
        prior.factors = read_f32(population.factors.val()).await?;
        // Each person's deviation from the mean is U a_i.
        let own = population
            .coefficients
            .val()
            .matmul(population.factors.val().transpose());
        let centred = own.clone() - own.mean_dim(0);
        f64::from(read_f32(centred.powi_scalar(2).sum()).await?[0])
    } else {
        heads
            .iter()
            .flat_map(|h| h.iter().zip(&prior.mean))
            .map(|(&w, &m)| (f64::from(w) - f64::from(m)).powi(2))
            .sum()
    };
    shrink_mean(&mut prior.mean, deviations, heads.len());
    Ok(prior)
}

/// How well `prior` predicts `people`'s answers (`rows` of `pairs` per person, in order) from
/// a few of them: each person's head is fitted under it on their first answers (up to
/// [`ASKED`], at most half, as a new person gives them), and scored by the mean Bradley-Terry
/// loss on the rest.
async fn new_person_loss(
    prior: &PriorValues,
    pairs: &Pairs,
    people: &[Vec<usize>],
    fit: &FitConfig,
    device: &Device,
) -> Result<f64> {
    let base = prior.clone().into_head(device);
    let (mut total, mut count) = (0.0, 0usize);
    for rows in people {
        let asked = ASKED.min(rows.len() / 2);
        let head = fit_with_prior(&base, &pairs.select(&rows[..asked]), fit, device)?;
        let rest = pairs.select(&rows[asked..]);
        let (fa, fb) = rest.features(device);
        let w = head.linear.weight.val();
        let score = |f: Tensor<2>| f.matmul(w.clone()).reshape([rest.len()]);
        let loss = bradley_terry_loss(score(fa), score(fb), rest.targets(device));
        total += f64::from(read_f32(loss).await?[0]) * rest.len() as f64;
        count += rest.len();
    }
    Ok(total / count.max(1) as f64)
}

/// Which of `Heads` at `rank` and `Joint` at each of [`JOINT_RANKS`] under it
/// [`PriorMethod::Auto`] keeps (see there); `heads` and `person` as [`person_heads`] gives them.
async fn choose_method(
    pairs: &Pairs,
    heads: &[Vec<f32>],
    person: &[Option<usize>],
    rank: usize,
    fit: &FitConfig,
    device: &Device,
) -> Result<(PriorMethod, usize)> {
    let held = |p: usize| p % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1;
    if (0..heads.len()).filter(|&p| held(p)).count() < MIN_HELD_OUT {
        return Ok((PriorMethod::Heads, rank));
    }
    // The held-out people's pairs, person by person, in their order.
    let mut theirs = vec![vec![]; heads.len()];
    let (mut rows, mut who) = (vec![], vec![]);
    // The others are renumbered `0..` for the candidates made without the held-out people.
    let mut renumbered = vec![0; heads.len()];
    let others: Vec<usize> = (0..heads.len()).filter(|&p| !held(p)).collect();
    others
        .iter()
        .enumerate()
        .for_each(|(i, &p)| renumbered[p] = i);
    for (i, p) in person.iter().enumerate() {
        match *p {
            Some(p) if held(p) => theirs[p].push(i),
            Some(p) => {
                rows.push(i);
                who.push(renumbered[p]);
            }
            None => {}
        }
    }
    theirs.retain(|rows| rows.len() >= 2 * MIN_PAIRS);
    let their_heads: Vec<Vec<f32>> = others.iter().map(|&p| heads[p].clone()).collect();
    let train = pairs.select(&rows);
    let mut candidates = vec![(PriorMethod::Heads, rank)];
    candidates.extend(
        JOINT_RANKS
            .iter()
            .filter(|&&r| r < rank && r < others.len())
            .map(|&r| (PriorMethod::Joint, r)),
    );
    let (mut chosen, mut best) = ((PriorMethod::Heads, rank), f64::INFINITY);
    for (method, r) in candidates {
        let prior = make_prior(method, r, &their_heads, &train, &who, device).await?;
        let loss = new_person_loss(&prior, pairs, &theirs, fit, device).await?;
        if loss < best {
            (chosen, best) = ((method, r), loss);
        }
    }
    Ok(chosen)
}

/// A linear prior of `rank` (at most) from a population's pairs (`user` set per record), made
/// by `method`; also returns the method and rank it was made with ([`PriorMethod::Auto`]'s
/// choice).
pub async fn pretrain_linear(
    pairs: &Pairs,
    rank: usize,
    method: PriorMethod,
    fit: &FitConfig,
    device: &Device,
) -> Result<(LinearHead, PriorMethod, usize)> {
    let (heads, person) = person_heads(pairs, fit, device).await?;
    let rank = rank.clamp(1, heads.len().max(2) - 1);
    let (method, rank) = match method {
        PriorMethod::Auto => choose_method(pairs, &heads, &person, rank, fit, device).await?,
        chosen => (chosen, rank),
    };
    let (rows, who): (Vec<usize>, Vec<usize>) = person
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .unzip();
    let prior = make_prior(method, rank, &heads, &pairs.select(&rows), &who, device).await?;
    Ok((prior.into_head(device), method, rank))
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
