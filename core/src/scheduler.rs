//! diffusers' `EulerDiscreteScheduler` for few-step sampling, reproducing its float32 tables
//! (betas, alphas_cumprod, timesteps, sigmas) and its input scaling and Euler step exactly.
//! One-step SD-Turbo: timestep 999, sigma 14.614647, x0 = latents - sigma * eps.

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::{Error, Result};

/// The fields of `scheduler/scheduler_config.json` this scheduler reads (diffusers' defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

fn d_train_steps() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_beta_schedule() -> String {
    "linear".into()
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_spacing() -> String {
    "linspace".into()
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// Euler sampling tables for a fixed number of steps.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    /// The timestep passed to the UNet at each step (float, as diffusers passes it).
    pub timesteps: Vec<f32>,
    /// Noise level at each step, plus a final 0.
    pub sigmas: Vec<f32>,
    /// The scale of the initial unit noise (sigma_max for trailing/linspace spacing).
    pub init_noise_sigma: f32,
    pub prediction: Prediction,
}

impl EulerScheduler {
    /// The tables for `steps` steps; `file` names the config in errors.
    pub fn new(config: &SchedulerConfig, steps: usize, file: &str) -> Result<Self> {
        let unsupported = |field: &str, value: &str| {
            Err(Error::Unsupported(format!(
                "{file}: {field} = {value:?} (Euler supports the values SD-Turbo-class models use)"
            )))
        };
        let n = config.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(Error::BadArgument {
                argument: "steps".into(),
                reason: format!("{steps} is not in 1..={n}"),
            });
        }
        if config.use_karras_sigmas {
            return unsupported("use_karras_sigmas", "true");
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            other => return unsupported("prediction_type", other),
        };
        // torch.linspace in float32 fills from both ends towards the middle.
        let linspace = |start: f32, end: f32| -> Vec<f32> {
            let step = (end - start) / (n - 1) as f32;
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        start + step * i as f32
                    } else {
                        end - step * (n - 1 - i) as f32
                    }
                })
                .collect()
        };
        let betas: Vec<f32> = match config.beta_schedule.as_str() {
            "linear" => linspace(config.beta_start as f32, config.beta_end as f32),
            "scaled_linear" => linspace(
                config.beta_start.sqrt() as f32,
                config.beta_end.sqrt() as f32,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            other => return unsupported("beta_schedule", other),
        };
        // torch.cumprod on the CPU accumulates float32 values in double.
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for beta in &betas {
            acc *= f64::from(1.0 - beta);
            alphas_cumprod.push(acc as f32);
        }
        let train_sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let ratio = n as f64 / steps as f64;
        let timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
            // np.arange(n, 0, -ratio).round() - 1
            "trailing" => (0..steps)
                .map(|i| (n as f64 - i as f64 * ratio).round_ties_even() - 1.0)
                .collect(),
            // np.linspace(0, n - 1, steps)[::-1]
            "linspace" => (0..steps)
                .map(|i| {
                    if steps == 1 {
                        0.0
                    } else {
                        (n - 1) as f64 * (steps - 1 - i) as f64 / (steps - 1) as f64
                    }
                })
                .collect(),
            other => return unsupported("timestep_spacing", other),
        };
        // np.interp over the train sigmas (exact at integer timesteps).
        let interp = |t: f64| {
            let lo = (t.floor().max(0.0) as usize).min(n - 1);
            let hi = (lo + 1).min(n - 1);
            let frac = t - lo as f64;
            (f64::from(train_sigmas[lo]) * (1.0 - frac) + f64::from(train_sigmas[hi]) * frac) as f32
        };
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| interp(t)).collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().fold(0.0f32, |m, &s| m.max(s));
        let init_noise_sigma =
            if config.timestep_spacing == "linspace" || config.timestep_spacing == "trailing" {
                max_sigma
            } else {
                (max_sigma * max_sigma + 1.0).sqrt()
            };
        Ok(Self {
            timesteps: timesteps.iter().map(|&t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
            prediction,
        })
    }

    /// The UNet's input at `step`: `sample / sqrt(sigma^2 + 1)`.
    pub fn scale_model_input<const D: usize>(&self, sample: Tensor<D>, step: usize) -> Tensor<D> {
        let sigma = self.sigmas[step];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    /// The denoised estimate x0 from the model output at `step`.
    pub fn pred_original<const D: usize>(
        &self,
        model_output: Tensor<D>,
        step: usize,
        sample: Tensor<D>,
    ) -> Tensor<D> {
        let sigma = self.sigmas[step];
        match self.prediction {
            Prediction::Epsilon => sample - model_output * sigma,
            Prediction::VPrediction => {
                model_output * (-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample / (sigma * sigma + 1.0)
            }
        }
    }

    /// One Euler step from `step` to `step + 1` (to x0 at the last step, where sigma is 0).
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        step: usize,
        sample: Tensor<D>,
    ) -> Tensor<D> {
        let sigma = self.sigmas[step];
        let x0 = self.pred_original(model_output, step, sample.clone());
        let derivative = (sample.clone() - x0) / sigma;
        sample + derivative * (self.sigmas[step + 1] - sigma)
    }

    /// One `EulerAncestralDiscreteScheduler` step: the deterministic move to sigma_down plus
    /// `noise * sigma_up`. At the last step (sigma 0) it equals [`Self::step`].
    pub fn step_ancestral<const D: usize>(
        &self,
        model_output: Tensor<D>,
        step: usize,
        sample: Tensor<D>,
        noise: Tensor<D>,
    ) -> Tensor<D> {
        let (from, to) = (self.sigmas[step], self.sigmas[step + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let x0 = self.pred_original(model_output, step, sample.clone());
        let derivative = (sample.clone() - x0) / from;
        sample + derivative * (down - from) + noise * up
    }
}
