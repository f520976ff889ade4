//! Exploration over noises, under one compute budget so methods compare at equal cost:
//! best-of-N (batched), cheap-proxy pruning (many seeds through a cheap decoder, the best few in
//! full), zero-order search around a pivot, and CARINOX (explore seeds, then ReNO from the best
//! few with each reward's gradient clipped separately).
//!
//! Costs are counted in generator+reward forward passes: one image scored costs
//! [`FORWARD_COST`], one with its gradient [`GRADIENT_COST`] (a backward pass is about two
//! forwards); CARINOX's per-reward gradients cost that once per weighted reward.

use serde::Serialize;

use crate::noise::Noise;
use crate::reno::{Flow, FlowFuture, NoiseObjective, RenoConfig, reno_awaiting};
use crate::rewards::ImageScores;
use crate::{Error, Result};

pub const FORWARD_COST: f32 = 1.0;
pub const GRADIENT_COST: f32 = 3.0;

/// A search method and its own settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// Noises of [`candidate_seeds`], scored `batch` at a time; the best is kept.
    BestOfN { batch: usize },
    /// Rounds of `neighbours` candidates `sqrt(1 - step^2) * pivot + step * eps` (still unit
    /// Gaussian); the pivot moves to the best candidate when it beats it.
    ZeroOrder { neighbours: usize, step: f32 },
    /// Cheap-proxy pruning: as many seeds as the budget allows scored through the objective's
    /// proxy decoder (each costing `proxy_cost` forward passes), then the best `keep` of them
    /// scored in full; only full scores can win.
    Pruned {
        keep: usize,
        batch: usize,
        proxy_cost: f32,
    },
    /// `explore` seeds scored, then ReNO (per-reward clipping) from the best `seeds` of them,
    /// the rest of the budget split evenly between the runs.
    Carinox {
        explore: usize,
        seeds: usize,
        reno: RenoConfig,
    },
}

/// The seeds a search from `seed` scores, `n` of them: `seed` itself first (so the plain image
/// is a candidate), then seeds drawn from a stream of `seed`'s own. Searches from neighbouring
/// seeds therefore explore different noises (with `seed, seed + 1, ...` the searches from seeds
/// 0 and 1 shared all but one candidate and often returned the same picture). Drawn seeds stay
/// below 2^53 so JavaScript numbers hold them exactly.
pub fn candidate_seeds(seed: u64, n: usize) -> Vec<u64> {
    let mut stream = crate::noise::Rng::new(seed ^ 0xCA4D_1DA7_E5EE_D500);
    std::iter::once(seed)
        .chain(std::iter::repeat_with(move || stream.next_u64() >> 11))
        .take(n)
        .collect()
}

/// One evaluation (or one ReNO iteration) of a search, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchStep {
    pub index: usize,
    /// Where the noise came from: `seed N`, `round R`, `seed N iteration I`.
    pub origin: String,
    pub rewards: Vec<f32>,
    pub reward_loss: f32,
    /// Scored through the proxy decoder (pruning's cheap pass), so never the best.
    pub proxy: bool,
    pub best_loss: f32,
    /// Budget spent so far, this step included.
    pub spent: f32,
}

#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub best_noise: Noise,
    pub best_origin: String,
    pub best_scores: ImageScores,
    pub steps: Vec<SearchStep>,
    pub spent: f32,
    /// Why the search ended early, if it did.
    pub stopped: Option<String>,
}

/// The running best and the record of steps.
struct Tracker<'a> {
    shape: Vec<usize>,
    best: Option<(Vec<f32>, String, ImageScores)>,
    steps: Vec<SearchStep>,
    spent: f32,
    on_step: &'a mut dyn FnMut(&SearchStep) -> FlowFuture,
    stopped: Option<String>,
}

impl Tracker<'_> {
    fn best_loss(&self) -> f32 {
        self.best.as_ref().map_or(f32::INFINITY, |(_, _, b)| b.loss)
    }

    /// Makes `z` the best if it beats the best so far.
    fn offer(&mut self, z: &[f32], origin: String, scores: &ImageScores) {
        if scores.loss.is_finite() && scores.loss < self.best_loss() {
            self.best = Some((z.to_vec(), origin, scores.clone()));
        }
    }

    /// Records a step that cost `cost` and returns the caller's answer to it, to be awaited;
    /// `best_elsewhere` is a better loss known outside the tracker (a ReNO run's best so far).
    fn push_step(
        &mut self,
        origin: String,
        scores: &ImageScores,
        cost: f32,
        best_elsewhere: f32,
        proxy: bool,
    ) -> FlowFuture {
        self.spent += cost;
        let step = SearchStep {
            index: self.steps.len(),
            origin,
            rewards: scores.rewards.clone(),
            reward_loss: scores.loss,
            proxy,
            best_loss: self.best_loss().min(best_elsewhere),
            spent: self.spent,
        };
        let flow = (self.on_step)(&step);
        self.steps.push(step);
        flow
    }

    /// Reports a step (see [`Tracker::push_step`]); [`Flow::Stop`] when the caller asked.
    async fn observe(
        &mut self,
        origin: String,
        scores: &ImageScores,
        cost: f32,
        best_elsewhere: f32,
        proxy: bool,
    ) -> Flow {
        let flow = self
            .push_step(origin, scores, cost, best_elsewhere, proxy)
            .await;
        if flow == Flow::Stop {
            self.stopped = Some(format!(
                "stopped by the caller after step {}",
                self.steps.len() - 1
            ));
        }
        flow
    }

    /// Records a scored noise; false when the caller asked to stop.
    async fn record(&mut self, z: &[f32], origin: String, scores: &ImageScores, cost: f32) -> bool {
        self.offer(z, origin.clone(), scores);
        self.observe(origin, scores, cost, f32::INFINITY, false)
            .await
            == Flow::Continue
    }

    fn finish(self) -> Result<SearchOutcome> {
        let (values, best_origin, best_scores) = self
            .best
            .ok_or_else(|| Error::argument("rewards", "no candidate had a finite reward loss"))?;
        Ok(SearchOutcome {
            best_noise: Noise {
                values,
                shape: self.shape,
            },
            best_origin,
            best_scores,
            steps: self.steps,
            spent: self.spent,
            stopped: self.stopped,
        })
    }
}

/// The largest budget a search may ask for, in forward passes (ReNO-50 costs about 150): each
/// candidate costs a record and, for best-of-N, a seed in a list made up front.
pub const MAX_BUDGET: f32 = 100_000.0;

fn too_small(method: &str, need: f32, budget: f32) -> Error {
    Error::argument(
        "budget",
        format!("{budget} forward passes; {method} needs at least {need}"),
    )
}

/// Scores the noises of `seeds` in batches of `batch`, in full or, with `proxy_cost`, through
/// the proxy decoder (never eligible as the best); returns (noise, seed, loss) of each.
async fn score_seeds(
    objective: &NoiseObjective<'_>,
    shape: &[usize],
    seeds: &[u64],
    batch: usize,
    proxy_cost: Option<f32>,
    tracker: &mut Tracker<'_>,
) -> Result<Vec<(Vec<f32>, u64, f32)>> {
    let mut scored = Vec::new();
    for chunk in seeds.chunks(batch.max(1)) {
        let zs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|&s| Noise::from_seed(s, shape).values)
            .collect();
        let scores = match proxy_cost {
            Some(_) => objective.evaluate_batch_proxy(&zs).await?,
            None => objective.evaluate_batch(&zs).await?,
        };
        for ((z, &seed), s) in zs.into_iter().zip(chunk).zip(&scores) {
            let go_on = match proxy_cost {
                Some(cost) => {
                    let origin = format!("seed {seed} (proxy)");
                    tracker.observe(origin, s, cost, f32::INFINITY, true).await == Flow::Continue
                }
                None => {
                    tracker
                        .record(&z, format!("seed {seed}"), s, FORWARD_COST)
                        .await
                }
            };
            scored.push((z, seed, s.loss));
            if !go_on {
                return Ok(scored);
            }
        }
    }
    Ok(scored)
}

/// Runs `method` from `seed` (best-of-N, pruning and CARINOX: noises of
/// [`candidate_seeds`]`(seed, ..)`; zero-order: the pivot starts at `seed`'s noise) within
/// `budget` forward passes.
pub async fn search(
    objective: &NoiseObjective<'_>,
    shape: &[usize],
    seed: u64,
    method: &Method,
    budget: f32,
    on_step: &mut dyn FnMut(&SearchStep) -> Flow,
) -> Result<SearchOutcome> {
    search_awaiting(objective, shape, seed, method, budget, &mut |step| {
        Box::pin(std::future::ready(on_step(step)))
    })
    .await
}

/// [`search`] whose caller answers each step with a future (see [`reno_awaiting`]).
pub async fn search_awaiting(
    objective: &NoiseObjective<'_>,
    shape: &[usize],
    seed: u64,
    method: &Method,
    budget: f32,
    on_step: &mut dyn FnMut(&SearchStep) -> FlowFuture,
) -> Result<SearchOutcome> {
    if !(budget.is_finite() && budget > 0.0 && budget <= MAX_BUDGET) {
        return Err(Error::argument(
            "budget",
            format!("{budget}: must be positive and at most {MAX_BUDGET} forward passes"),
        ));
    }
    let mut tracker = Tracker {
        shape: shape.to_vec(),
        best: None,
        steps: vec![],
        spent: 0.0,
        on_step,
        stopped: None,
    };
    match method {
        Method::BestOfN { batch } => {
            let n = (budget / FORWARD_COST) as usize;
            if n < 2 {
                return Err(too_small("best-of-N", 2.0 * FORWARD_COST, budget));
            }
            let seeds = candidate_seeds(seed, n);
            score_seeds(objective, shape, &seeds, *batch, None, &mut tracker).await?;
        }
        Method::ZeroOrder { neighbours, step } => {
            if !(step.is_finite() && *step > 0.0 && *step < 1.0) {
                return Err(Error::argument(
                    "step",
                    format!("{step}: must be in (0, 1)"),
                ));
            }
            let k = (*neighbours).max(1);
            let rounds = ((budget - FORWARD_COST) / (k as f32 * FORWARD_COST)).floor();
            if rounds < 1.0 {
                return Err(too_small(
                    "zero-order search",
                    (1 + k) as f32 * FORWARD_COST,
                    budget,
                ));
            }
            let mut pivot = Noise::from_seed(seed, shape).values;
            let start = objective
                .evaluate_batch(std::slice::from_ref(&pivot))
                .await?;
            let mut pivot_loss = start[0].loss;
            let mut go_on = tracker
                .record(&pivot, "pivot".into(), &start[0], FORWARD_COST)
                .await;
            // The perturbations come from a stream of their own, after the pivot's seed.
            let mut rng = crate::noise::Rng::new(seed ^ 0x005E_ED0F_2E20);
            let keep = (1.0 - step * step).sqrt();
            for round in 0..rounds as usize {
                if !go_on {
                    break;
                }
                let zs: Vec<Vec<f32>> = (0..k)
                    .map(|_| {
                        let eps = rng.gaussian(pivot.len());
                        pivot
                            .iter()
                            .zip(eps)
                            .map(|(p, e)| keep * p + step * e)
                            .collect()
                    })
                    .collect();
                let scores = objective.evaluate_batch(&zs).await?;
                let mut best_round: Option<usize> = None;
                for (i, s) in scores.iter().enumerate() {
                    let origin = format!("round {round} neighbour {i}");
                    go_on = tracker.record(&zs[i], origin, s, FORWARD_COST).await && go_on;
                    if s.loss < best_round.map_or(pivot_loss, |b| scores[b].loss) {
                        best_round = Some(i);
                    }
                }
                if let Some(b) = best_round {
                    pivot = zs[b].clone();
                    pivot_loss = scores[b].loss;
                }
            }
        }
        Method::Pruned {
            keep,
            batch,
            proxy_cost,
        } => {
            if !objective.has_proxy() {
                return Err(Error::argument(
                    "proxy",
                    "pruning needs a proxy decoder (e.g. TAESD) for the cheap pass",
                ));
            }
            if !(proxy_cost.is_finite() && *proxy_cost > 0.0) {
                return Err(Error::argument(
                    "proxy-cost",
                    format!("{proxy_cost}: must be positive"),
                ));
            }
            let keep = (*keep).max(1);
            let candidates = ((budget - keep as f32 * FORWARD_COST) / proxy_cost).floor();
            if candidates < (keep + 1) as f32 {
                let need = (keep + 1) as f32 * proxy_cost + keep as f32 * FORWARD_COST;
                return Err(too_small("proxy pruning", need, budget));
            }
            let seeds = candidate_seeds(seed, candidates as usize);
            let mut scored = score_seeds(
                objective,
                shape,
                &seeds,
                *batch,
                Some(*proxy_cost),
                &mut tracker,
            )
            .await?;
            scored.sort_by(|a, b| a.2.total_cmp(&b.2));
            let finalists: Vec<u64> = scored.iter().take(keep).map(|(_, s, _)| *s).collect();
            if tracker.stopped.is_none() {
                score_seeds(objective, shape, &finalists, *batch, None, &mut tracker).await?;
            }
        }
        Method::Carinox {
            explore,
            seeds,
            reno: config,
        } => {
            let k = (*seeds).max(1);
            let explore = (*explore).max(k);
            let weighted = objective.weights().iter().filter(|w| **w != 0.0).count();
            let per_iteration = GRADIENT_COST * weighted as f32;
            let left = budget - explore as f32 * FORWARD_COST;
            // Each run: (iterations - 1) gradient steps and a last forward pass.
            let iterations = ((left / k as f32 - FORWARD_COST) / per_iteration).floor() + 1.0;
            if iterations < 2.0 {
                let need =
                    explore as f32 * FORWARD_COST + k as f32 * (per_iteration + FORWARD_COST);
                return Err(too_small("CARINOX", need, budget));
            }
            let seeds = candidate_seeds(seed, explore);
            let mut scored =
                score_seeds(objective, shape, &seeds, explore, None, &mut tracker).await?;
            scored.sort_by(|a, b| a.2.total_cmp(&b.2));
            let config = RenoConfig {
                iterations: iterations as usize,
                clip_per_reward: true,
                preview_every: None,
                ..config.clone()
            };
            let weights = objective.weights();
            for (z, start_seed, _) in scored.into_iter().take(k) {
                if tracker.stopped.is_some() {
                    break;
                }
                let noise = Noise {
                    values: z,
                    shape: shape.to_vec(),
                };
                let outcome = reno_awaiting(objective, noise, &config, &mut |it, _| {
                    let cost = if it.grad_norm.is_some() {
                        per_iteration
                    } else {
                        FORWARD_COST
                    };
                    let origin = format!("seed {start_seed} iteration {}", it.iteration);
                    // A stop ends this run; its `stopped` is carried over below.
                    tracker.push_step(
                        origin,
                        &ImageScores::new(it.rewards.clone(), &weights, it.reward_loss),
                        cost,
                        it.best_loss,
                        false,
                    )
                })
                .await?;
                if let Some(best) = outcome.best() {
                    let origin = format!("seed {start_seed} iteration {}", best.iteration);
                    tracker.offer(
                        &outcome.best_noise.values,
                        origin,
                        &ImageScores::new(best.rewards.clone(), &weights, best.reward_loss),
                    );
                }
                if let Some(why) = outcome.stopped {
                    tracker.stopped.get_or_insert(why);
                }
            }
        }
    }
    tracker.finish()
}
