//! ReNO, reward-based noise optimisation (Eyring et al., 2024), as its reference loop does it:
//! each iteration generates from the current unit noise `z`, scores the image with the reward
//! set, and steps `z` along the gradient of
//!
//! `loss = sum_i w_i (c_i - r_i)  +  prior_weight * (0.5 ||z||^2 - (d - 1) log ||z||)`
//!
//! (the second term keeps `||z||` near the `sqrt(d - 1)` of a Gaussian's chi distribution),
//! with the gradient's norm clipped, by SGD with Nesterov momentum (or Adam). The result is the
//! iterate with the lowest reward-only loss, not the last one; the last iteration is scored but
//! takes no step, as in the reference.
//!
//! The gradient flows through the UNet, the decoder, each reward's differentiable preprocessing
//! and the rewards; the text conditioning is computed once, without gradient. The optimiser
//! runs on the host in f32 (the noise is small), the prior's gradient is its closed form
//! `prior_weight * (1 - (d - 1) / ||z||^2) z`.

use std::future::Future;
use std::pin::Pin;

use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use crate::noise::Noise;
use crate::pipeline::{Conditioning, LoadedDecoder, Pipeline, RgbImage, to_rgb8};
use crate::rewards::{ImageScores, RewardSet, RewardValues};
use crate::{Error, Result, read_f32};

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// `torch.optim.SGD` (no dampening, no weight decay).
    Sgd { momentum: f32, nesterov: bool },
    /// `torch.optim.Adam` (no weight decay).
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

impl Optimizer {
    /// ReNO's: momentum 0.9, Nesterov.
    pub const RENO: Self = Self::Sgd {
        momentum: 0.9,
        nesterov: true,
    };
    /// torch's Adam defaults.
    pub const ADAM: Self = Self::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
}

/// The most iterations one run may ask for (ReNO's paper uses 50; each keeps a record).
pub const MAX_ITERATIONS: usize = 100_000;

/// ReNO's hyper-parameters; `Default` is the paper's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenoConfig {
    /// Scored iterates; `iterations - 1` steps.
    pub iterations: usize,
    pub lr: f32,
    pub optimizer: Optimizer,
    /// Largest gradient norm (`clip_grad_norm_`); infinity turns clipping off.
    pub grad_clip: f32,
    /// Weight of the chi-norm prior; 0 turns it off.
    pub prior_weight: f32,
    /// Sampling steps of the one-step model.
    pub steps: usize,
    /// Seed of ancestral schedulers' extra noise (the same every iteration).
    pub seed: u64,
    /// CARINOX's rule: clip each reward's gradient to `grad_clip` before summing (one
    /// backward pass per weighted reward), then clip the sum as usual.
    pub clip_per_reward: bool,
    /// Read the image back for the event every this many iterations (and at the last one).
    pub preview_every: Option<usize>,
}

impl Default for RenoConfig {
    fn default() -> Self {
        Self {
            iterations: 50,
            lr: 5.0,
            optimizer: Optimizer::RENO,
            grad_clip: 0.1,
            prior_weight: 0.01,
            steps: 1,
            seed: 0,
            clip_per_reward: false,
            preview_every: None,
        }
    }
}

impl RenoConfig {
    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::argument(
                    name,
                    format!("{v}: must be a positive number"),
                ))
            }
        };
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return Err(Error::argument(
                "iterations",
                format!("{}: must be 1 to {MAX_ITERATIONS}", self.iterations),
            ));
        }
        positive("lr", self.lr)?;
        if self.grad_clip.is_nan() || self.grad_clip <= 0.0 {
            return Err(Error::argument(
                "grad-clip",
                format!("{}: must be positive (infinity for none)", self.grad_clip),
            ));
        }
        if !(self.prior_weight.is_finite() && self.prior_weight >= 0.0) {
            return Err(Error::argument(
                "prior-weight",
                format!("{}: must be zero or positive", self.prior_weight),
            ));
        }
        match self.optimizer {
            Optimizer::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => Err(
                Error::argument("momentum", format!("{momentum}: must be in [0, 1)")),
            ),
            Optimizer::Adam { beta1, beta2, eps }
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0) =>
            {
                Err(Error::argument(
                    "adam",
                    format!("betas ({beta1}, {beta2}) must be in [0, 1) and eps {eps} positive"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// One scored iterate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Iteration {
    pub iteration: usize,
    /// Per reward term, in the set's order.
    pub rewards: Vec<f32>,
    /// `sum_i w_i (c_i - r_i)`: what selects the best iterate.
    pub reward_loss: f32,
    /// The prior term (0 when its weight is 0).
    pub prior: f32,
    pub noise_norm: f32,
    /// Norm of the whole gradient before clipping; `None` where no step was taken.
    pub grad_norm: Option<f32>,
    /// Best iterate so far (this one included) and its reward loss.
    pub best_iteration: usize,
    pub best_loss: f32,
}

/// What the caller wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop before the next iteration; the best iterate so far is returned.
    Stop,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RenoOutcome {
    /// The unit noise of the best iterate.
    pub best_noise: Noise,
    pub best_iteration: usize,
    pub trajectory: Vec<Iteration>,
    /// Why the run ended before its last iteration, if it did.
    pub stopped: Option<String>,
}

impl RenoOutcome {
    pub fn best(&self) -> Option<&Iteration> {
        self.trajectory.get(self.best_iteration)
    }
}

/// The update rule's state.
struct Stepper {
    optimizer: Optimizer,
    lr: f32,
    /// Momentum buffer, or Adam's first moment.
    first: Vec<f32>,
    /// Adam's second moment.
    second: Vec<f32>,
    steps: i32,
}

impl Stepper {
    fn new(optimizer: Optimizer, lr: f32, n: usize) -> Self {
        Self {
            optimizer,
            lr,
            first: vec![],
            second: vec![0.0; n],
            steps: 0,
        }
    }

    fn step(&mut self, z: &mut [f32], g: &[f32]) {
        self.steps += 1;
        match self.optimizer {
            Optimizer::Sgd { momentum, nesterov } => {
                // torch: the buffer starts as the first gradient, then buf = m * buf + g.
                if self.first.is_empty() {
                    self.first = g.to_vec();
                } else {
                    for (b, &gi) in self.first.iter_mut().zip(g) {
                        *b = momentum * *b + gi;
                    }
                }
                for ((zi, &gi), &b) in z.iter_mut().zip(g).zip(&self.first) {
                    let d = if nesterov { gi + momentum * b } else { b };
                    *zi -= self.lr * d;
                }
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                if self.first.is_empty() {
                    self.first = vec![0.0; z.len()];
                }
                let c1 = 1.0 - beta1.powi(self.steps);
                let c2 = (1.0 - beta2.powi(self.steps)).sqrt();
                for i in 0..z.len() {
                    self.first[i] = beta1 * self.first[i] + (1.0 - beta1) * g[i];
                    self.second[i] = beta2 * self.second[i] + (1.0 - beta2) * g[i] * g[i];
                    let denom = self.second[i].sqrt() / c2 + eps;
                    z[i] -= self.lr / c1 * self.first[i] / denom;
                }
            }
        }
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}

/// torch's `clip_grad_norm_`: scales by `max_norm / (norm + 1e-6)` when that is below 1.
fn clip_norm(g: &mut [f32], max_norm: f32) {
    let scale = max_norm / (norm(g) + 1e-6);
    if scale < 1.0 {
        g.iter_mut().for_each(|gi| *gi *= scale);
    }
}

/// The chi-norm prior on `d`-dimensional noise and its gradient's coefficient on `z`.
fn prior(weight: f32, z_norm: f32, d: usize) -> (f32, f32) {
    if weight == 0.0 {
        return (0.0, 0.0);
    }
    let (n, d1) = (f64::from(z_norm), (d - 1) as f64);
    let value = f64::from(weight) * (0.5 * n * n - d1 * n.ln());
    let coefficient = f64::from(weight) * (1.0 - d1 / (n * n));
    (value as f32, coefficient as f32)
}

/// A noise's image and scores, and the gradient of the reward loss w.r.t. the noise.
pub struct Evaluation {
    pub scores: ImageScores,
    /// `d(sum_i w_i (c_i - r_i)) / dz`, when asked for.
    pub gradient: Option<Vec<f32>>,
    /// The decoded image in about [-1, 1], `[1, 3, H, W]`.
    pub image: Tensor<4>,
}

/// Noise -> image -> weighted reward loss, for one prompt: what ReNO and the search methods
/// evaluate. The prompt's conditioning and text features are computed once, here.
pub struct NoiseObjective<'a> {
    pipeline: &'a Pipeline,
    rewards: &'a RewardSet,
    conditioning: Conditioning,
    shape: [usize; 4],
    steps: usize,
    seed: u64,
    /// A cheaper decoder for pruning candidates (see [`NoiseObjective::with_proxy`]).
    proxy: Option<&'a LoadedDecoder>,
}

impl<'a> NoiseObjective<'a> {
    /// `shape` is the noise's, `[1, C, h, w]`. Prompts too long for a text encoder are cut,
    /// as diffusers and the rewards' references do.
    pub fn new(
        pipeline: &'a Pipeline,
        rewards: &'a mut RewardSet,
        prompt: &str,
        shape: &[usize],
        steps: usize,
        seed: u64,
    ) -> Result<Self> {
        if rewards.terms().iter().all(|t| t.weight == 0.0) {
            return Err(Error::argument(
                "rewards",
                "every reward weight is 0: there is nothing to optimise",
            ));
        }
        let shape: [usize; 4] = match shape {
            &[1, c, h, w] if c == pipeline.unet.config.in_channels => [1, c, h, w],
            other => {
                return Err(Error::argument(
                    "noise",
                    format!(
                        "shape {other:?}; expected one noise [1, {}, h, w]",
                        pipeline.unet.config.in_channels
                    ),
                ));
            }
        };
        let conditioning = pipeline.encode_prompt(prompt)?;
        rewards.set_prompt(prompt, true)?;
        Ok(Self {
            pipeline,
            rewards,
            conditioning,
            shape,
            steps,
            seed,
            proxy: None,
        })
    }

    /// Adds a cheap proxy decoder (e.g. TAESD) for [`NoiseObjective::evaluate_batch_proxy`].
    pub fn with_proxy(self, decoder: &'a LoadedDecoder) -> Self {
        Self {
            proxy: Some(decoder),
            ..self
        }
    }

    pub fn has_proxy(&self) -> bool {
        self.proxy.is_some()
    }

    /// Number of noise values.
    pub fn dimension(&self) -> usize {
        self.shape.iter().product()
    }

    /// The weights of the rewards, in the set's order.
    pub fn weights(&self) -> Vec<f32> {
        self.rewards.terms().iter().map(|t| t.weight).collect()
    }

    /// Noises `[n, C, h, w]` (concatenated values) -> images -> reward values.
    fn forward(&self, x: Tensor<4>) -> Result<(Tensor<4>, RewardValues)> {
        self.forward_with(&self.pipeline.decoder, x)
    }

    fn forward_with(
        &self,
        decoder: &LoadedDecoder,
        x: Tensor<4>,
    ) -> Result<(Tensor<4>, RewardValues)> {
        let latents = self.pipeline.denoise_tensor(
            &self.conditioning,
            x,
            self.steps,
            self.seed,
            &mut |_, _| {},
        )?;
        let image = self.pipeline.decode_with(decoder, latents);
        let values = self
            .rewards
            .evaluate((image.clone() / 2.0 + 0.5).clamp(0.0, 1.0))?;
        Ok((image, values))
    }

    fn upload(&self, values: Vec<f32>, n: usize) -> Tensor<4> {
        let [_, c, h, w] = self.shape;
        Tensor::<4>::from_data(
            TensorData::new(values, [n, c, h, w]),
            self.pipeline.device(),
        )
    }

    fn check_gradients_possible(&self) -> Result<()> {
        if self
            .pipeline
            .device()
            .gradient_checkpointing_strategy()
            .is_none()
        {
            return Err(Error::argument(
                "device",
                "gradients need the pipeline and rewards loaded on `device.autodiff()`",
            ));
        }
        Ok(())
    }

    async fn gradient_of(&self, loss: Tensor<1>, x: &Tensor<4>) -> Result<Vec<f32>> {
        let grads = loss.sum().backward();
        let g = x.grad(&grads).ok_or_else(|| {
            Error::argument("device", "no gradient reached the noise (is it autodiff?)")
        })?;
        read_f32(g).await
    }

    /// Generates from `z` and scores the image; with `gradient`, also backpropagates the reward
    /// loss to `z` (the pipeline and rewards must then live on an autodiff device).
    pub async fn evaluate(&self, z: &[f32], gradient: bool) -> Result<Evaluation> {
        if gradient {
            self.check_gradients_possible()?;
        }
        let x = self.upload(z.to_vec(), 1);
        let x = if gradient { x.require_grad() } else { x };
        let (image, values) = self.forward(x.clone())?;
        let gradient = match gradient {
            true => Some(self.gradient_of(values.loss.clone(), &x).await?),
            false => None,
        };
        let scores = self.rewards.read(values).await?.remove(0);
        Ok(Evaluation {
            scores,
            gradient,
            image: image.detach(),
        })
    }

    /// Scores several noises in one batch (no gradient): one [`ImageScores`] each.
    pub async fn evaluate_batch(&self, zs: &[Vec<f32>]) -> Result<Vec<ImageScores>> {
        self.score_batch(&self.pipeline.decoder, zs).await
    }

    /// [`NoiseObjective::evaluate_batch`] through the proxy decoder.
    pub async fn evaluate_batch_proxy(&self, zs: &[Vec<f32>]) -> Result<Vec<ImageScores>> {
        let proxy = self
            .proxy
            .ok_or_else(|| Error::argument("proxy", "no proxy decoder was given"))?;
        self.score_batch(proxy, zs).await
    }

    async fn score_batch(
        &self,
        decoder: &LoadedDecoder,
        zs: &[Vec<f32>],
    ) -> Result<Vec<ImageScores>> {
        if zs.iter().any(|z| z.len() != self.dimension()) {
            return Err(Error::argument("noise", "a candidate has the wrong size"));
        }
        let (_, values) = self.forward_with(decoder, self.upload(zs.concat(), zs.len()))?;
        self.rewards.read(values).await
    }

    /// Each weighted reward's own loss gradient w.r.t. `z` (`None` for zero weights): one
    /// forward and backward pass per reward, since burn cannot keep a graph for a second
    /// backward. The scores come from the first pass.
    pub async fn term_gradients(&self, z: &[f32]) -> Result<(Evaluation, Vec<Option<Vec<f32>>>)> {
        self.check_gradients_possible()?;
        let mut first = None;
        let mut gradients = Vec::new();
        for (i, term) in self.rewards.terms().iter().enumerate() {
            if term.weight == 0.0 {
                gradients.push(None);
                continue;
            }
            let x = self.upload(z.to_vec(), 1).require_grad();
            let (image, values) = self.forward(x.clone())?;
            let constant = term.reward.kind().loss_constant();
            let loss = (values.rewards[i].clone().neg() + constant) * term.weight;
            gradients.push(Some(self.gradient_of(loss, &x).await?));
            if first.is_none() {
                let scores = self.rewards.read(values).await?.remove(0);
                first = Some(Evaluation {
                    scores,
                    gradient: None,
                    image: image.detach(),
                });
            }
        }
        let first = first.ok_or_else(|| Error::argument("rewards", "every reward weight is 0"))?;
        Ok((first, gradients))
    }
}

/// A caller's answer to an event that may take time to arrive: a browser worker awaits its
/// event loop there, so that a Stop sent while an iteration ran is seen before the next one.
pub type FlowFuture = Pin<Box<dyn Future<Output = Flow>>>;

/// Runs ReNO from `noise` (unit Gaussian `[1, C, h, w]`). `on_event` sees every iteration
/// (with the image when [`RenoConfig::preview_every`] asks for it) and may stop the run.
pub async fn reno(
    objective: &NoiseObjective<'_>,
    noise: Noise,
    config: &RenoConfig,
    on_event: &mut dyn FnMut(&Iteration, Option<&RgbImage>) -> Flow,
) -> Result<RenoOutcome> {
    reno_awaiting(objective, noise, config, &mut |event, preview| {
        Box::pin(std::future::ready(on_event(event, preview)))
    })
    .await
}

/// [`reno`] whose caller answers each event with a future.
pub async fn reno_awaiting(
    objective: &NoiseObjective<'_>,
    noise: Noise,
    config: &RenoConfig,
    on_event: &mut dyn FnMut(&Iteration, Option<&RgbImage>) -> FlowFuture,
) -> Result<RenoOutcome> {
    optimize(objective, noise, config, on_event).await
}

/// What ReNO's loop asks of an objective (a seam, so the loop's failure handling is tested
/// without a model).
trait Objective {
    fn dimension(&self) -> usize;
    async fn evaluate(&self, z: &[f32], gradient: bool) -> Result<Evaluation>;
    async fn term_gradients(&self, z: &[f32]) -> Result<(Evaluation, Vec<Option<Vec<f32>>>)>;
}

impl Objective for NoiseObjective<'_> {
    fn dimension(&self) -> usize {
        NoiseObjective::dimension(self)
    }
    async fn evaluate(&self, z: &[f32], gradient: bool) -> Result<Evaluation> {
        NoiseObjective::evaluate(self, z, gradient).await
    }
    async fn term_gradients(&self, z: &[f32]) -> Result<(Evaluation, Vec<Option<Vec<f32>>>)> {
        NoiseObjective::term_gradients(self, z).await
    }
}

async fn optimize(
    objective: &impl Objective,
    noise: Noise,
    config: &RenoConfig,
    on_event: &mut dyn FnMut(&Iteration, Option<&RgbImage>) -> FlowFuture,
) -> Result<RenoOutcome> {
    config.validate()?;
    if noise.values.len() != objective.dimension() {
        return Err(Error::argument(
            "noise",
            format!("shape {:?} does not match the objective's", noise.shape),
        ));
    }
    if let Some(i) = noise.values.iter().position(|v| !v.is_finite()) {
        return Err(Error::argument("noise", format!("value {i} is not finite")));
    }
    let d = noise.values.len();
    let mut z = noise.values.clone();
    let mut stepper = Stepper::new(config.optimizer, config.lr, d);
    let mut trajectory: Vec<Iteration> = Vec::with_capacity(config.iterations);
    let mut best: Option<(usize, f32, Vec<f32>)> = None;
    let mut stopped = None;
    for iteration in 0..config.iterations {
        let last = iteration + 1 == config.iterations;
        let evaluated = if config.clip_per_reward && !last {
            objective
                .term_gradients(&z)
                .await
                .map(|(mut eval, per_term)| {
                    let mut sum = vec![0.0f32; d];
                    for mut g in per_term.into_iter().flatten() {
                        clip_norm(&mut g, config.grad_clip);
                        sum.iter_mut().zip(&g).for_each(|(s, gi)| *s += gi);
                    }
                    eval.gradient = Some(sum);
                    eval
                })
        } else {
            objective.evaluate(&z, !last).await
        };
        // A failure after the first scored iterate (the device out of memory at a larger
        // step, a lost device) ends the run with the best so far and says why.
        let eval = match (evaluated, &best) {
            (Ok(eval), _) => eval,
            (Err(e), Some((best_iteration, _, _))) => {
                stopped = Some(format!(
                    "iteration {iteration}: {e}; kept the best iterate so far (iteration \
                     {best_iteration})"
                ));
                break;
            }
            (Err(e), None) => return Err(e),
        };
        let loss = eval.scores.loss;
        let z_norm = norm(&z);
        let (prior_value, prior_coefficient) = prior(config.prior_weight, z_norm, d);
        if loss.is_finite() && best.as_ref().is_none_or(|(_, l, _)| loss < *l) {
            best = Some((iteration, loss, z.clone()));
        }
        let Some((best_iteration, best_loss, _)) = &best else {
            stopped = Some(format!("iteration {iteration}: the reward loss is {loss}"));
            break;
        };
        let mut event = Iteration {
            iteration,
            rewards: eval.scores.rewards.clone(),
            reward_loss: loss,
            prior: prior_value,
            noise_norm: z_norm,
            grad_norm: None,
            best_iteration: *best_iteration,
            best_loss: *best_loss,
        };
        let step = eval.gradient.map(|mut g| {
            for (gi, &zi) in g.iter_mut().zip(&z) {
                *gi += prior_coefficient * zi;
            }
            let g_norm = norm(&g);
            event.grad_norm = Some(g_norm);
            (g, g_norm)
        });
        let preview = match config.preview_every {
            Some(k) if k > 0 && (iteration % k == 0 || last) => Some(to_rgb8(eval.image).await?),
            _ => None,
        };
        let flow = on_event(&event, preview.as_ref()).await;
        let finite = loss.is_finite() && event.grad_norm.is_none_or(f32::is_finite);
        trajectory.push(event);
        if !finite {
            stopped = Some(format!(
                "iteration {iteration}: the loss or its gradient is not finite; kept the best \
                 iterate so far"
            ));
            break;
        }
        if flow == Flow::Stop && !last {
            stopped = Some(format!("stopped by the caller after iteration {iteration}"));
            break;
        }
        if let Some((mut g, _)) = step {
            clip_norm(&mut g, config.grad_clip);
            stepper.step(&mut z, &g);
        }
    }
    let (best_iteration, _, best_z) = best.ok_or_else(|| {
        Error::argument(
            "rewards",
            stopped
                .clone()
                .unwrap_or_else(|| "no iterate was scored".into()),
        )
    })?;
    Ok(RenoOutcome {
        best_noise: Noise {
            shape: noise.shape.clone(),
            values: best_z,
        },
        best_iteration,
        trajectory,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Loss `|z - 1|^2 / d` (falling under ReNO's steps), failing from call `fail_at` on.
    struct Quadratic {
        calls: Cell<usize>,
        fail_at: usize,
        d: usize,
    }

    impl Objective for Quadratic {
        fn dimension(&self) -> usize {
            self.d
        }
        async fn evaluate(&self, z: &[f32], gradient: bool) -> Result<Evaluation> {
            let call = self.calls.get();
            self.calls.set(call + 1);
            if call >= self.fail_at {
                return Err(Error::OutOfMemory(format!("a 2 GiB buffer at call {call}")));
            }
            let n = self.d as f32;
            let loss = z.iter().map(|v| (v - 1.0).powi(2)).sum::<f32>() / n;
            let image = Tensor::<4>::zeros([1, 3, 2, 2], &burn::tensor::Device::flex());
            Ok(Evaluation {
                scores: ImageScores::new(vec![-loss], &[1.0], loss),
                gradient: gradient.then(|| z.iter().map(|v| 2.0 * (v - 1.0) / n).collect()),
                image,
            })
        }
        async fn term_gradients(&self, z: &[f32]) -> Result<(Evaluation, Vec<Option<Vec<f32>>>)> {
            let eval = self.evaluate(z, true).await?;
            let g = eval.gradient.clone();
            Ok((eval, vec![g]))
        }
    }

    fn run(fail_at: usize) -> Result<RenoOutcome> {
        let objective = Quadratic {
            calls: Cell::new(0),
            fail_at,
            d: 16,
        };
        let config = RenoConfig {
            iterations: 10,
            ..RenoConfig::default()
        };
        let noise = Noise::from_seed(1, &[1, 1, 4, 4]);
        pollster::block_on(optimize(&objective, noise, &config, &mut |_, _| {
            Box::pin(std::future::ready(Flow::Continue))
        }))
    }

    #[test]
    fn running_out_of_memory_mid_run_keeps_the_best_iterate_and_names_the_levers() {
        let full = run(usize::MAX).unwrap();
        assert!(full.stopped.is_none());
        let cut = run(4).unwrap();
        let why = cut.stopped.expect("the run says why it stopped");
        assert!(
            why.starts_with("iteration 4: the device ran out of memory"),
            "{why}"
        );
        assert!(
            why.contains("compute in f16") && why.contains("TAESD"),
            "{why}"
        );
        assert_eq!(cut.trajectory.len(), 4);
        // The best of the four scored iterates, the same as the full run's at that point.
        let best = cut
            .trajectory
            .iter()
            .map(|i| i.reward_loss)
            .fold(f32::MAX, f32::min);
        assert_eq!(cut.trajectory[cut.best_iteration].reward_loss, best);
        assert_eq!(cut.trajectory[..4], full.trajectory[..4]);
        assert!(
            best < cut.trajectory[0].reward_loss,
            "the steps lowered the loss"
        );
        // Failing before any iterate was scored is the error itself.
        let err = run(0).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    }
}
