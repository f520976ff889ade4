//! ReNO against its reference loop in PyTorch (tests/reference/make_reno_fixtures.py): the tiny
//! SD-Turbo pipeline optimised for CLIPScore + LAION aesthetic, every iteration's rewards, norms
//! and gradient norms, the best iterate and its noise, with SGD-Nesterov (gradient clipping
//! active from iteration 6) and Adam; the gradient against finite differences; stopping,
//! previews, determinism and bad input.

mod common;

use common::*;
use pollster::block_on;
use serde_json::Value;
use tastebud_core::burn::tensor::Device;
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::Pipeline;
use tastebud_core::reno::{Flow, NoiseObjective, Optimizer, RenoConfig, RenoOutcome, reno};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};

const REFERENCE: &str = "reno/reference.safetensors";
const PROMPT: &str = "a photo of a cat";
const HEAD: &str = "sac+logos+ava1-l14-linearMSE.pth";

fn reference(name: &str) -> Vec<f32> {
    reference_tensor_in(REFERENCE, name).0
}

fn reference_json() -> Value {
    let bytes = std::fs::read(fixtures().join("reno/reference.json")).expect("reno json");
    serde_json::from_slice(&bytes).expect("parses")
}

/// The tiny pipeline and the reference's rewards (CLIPScore 0.1, aesthetic 1.0), on `device`.
fn setup(device: &Device, weights: [f32; 2]) -> (Pipeline, RewardSet) {
    let pipeline = Pipeline::from_files(snapshot_files("sd-turbo-tiny"), device).expect("pipeline");
    let mut aesthetic = model_files("clip-openai");
    let head = std::fs::read(fixtures().join("rewards/aesthetic-head").join(HEAD)).expect("head");
    aesthetic.insert(HEAD, head);
    let terms = [
        (RewardKind::Clip, model_files("clip-openai"), weights[0]),
        (RewardKind::Aesthetic, aesthetic, weights[1]),
    ]
    .into_iter()
    .map(|(kind, files, weight)| RewardTerm {
        label: kind.name().into(),
        reward: rewards::load(kind, files, device).expect("reward"),
        weight,
    })
    .collect();
    (pipeline, RewardSet::new(terms).expect("reward set"))
}

fn start_noise() -> Noise {
    Noise {
        values: reference("noise"),
        shape: vec![1, 4, 6, 5],
    }
}

fn config(run: &str) -> RenoConfig {
    let r = &reference_json()["runs"][run];
    let f = |k: &str| r[k].as_f64().expect("number") as f32;
    RenoConfig {
        iterations: r["iterations"].as_u64().expect("iterations") as usize,
        lr: f("lr"),
        optimizer: if r["optimizer"] == "adam" {
            Optimizer::ADAM
        } else {
            Optimizer::RENO
        },
        grad_clip: f("grad_clip"),
        prior_weight: f("prior_weight"),
        ..RenoConfig::default()
    }
}

fn run(objective: &NoiseObjective, config: &RenoConfig) -> RenoOutcome {
    block_on(reno(objective, start_noise(), config, &mut |_, _| {
        Flow::Continue
    }))
    .expect("reno")
}

#[test]
fn reno_follows_the_reference_trajectory() {
    for device in devices() {
        let on = device_name(&device);
        let ad = device.device.clone().autodiff();
        let (pipeline, mut rewards) = setup(&ad, [0.1, 1.0]);
        let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
            .expect("objective");
        for name in ["sgd", "adam"] {
            let out = run(&objective, &config(name));
            let t = &out.trajectory;
            assert_eq!(t.len(), config(name).iterations, "{name} on {on}");
            assert!(out.stopped.is_none());
            let column = |f: &dyn Fn(&tastebud_core::reno::Iteration) -> Option<f32>| {
                t.iter().filter_map(f).collect::<Vec<f32>>()
            };
            let what = |k: &str| format!("{name} {k} on {on}");
            assert_close(
                &what("clip"),
                &column(&|i| Some(i.rewards[0])),
                &reference(&format!("{name}.clip")),
                1e-3,
            );
            assert_close(
                &what("aesthetic"),
                &column(&|i| Some(i.rewards[1])),
                &reference(&format!("{name}.aesthetic")),
                1e-3,
            );
            assert_close(
                &what("noise norm"),
                &column(&|i| Some(i.noise_norm)),
                &reference(&format!("{name}.noise_norm")),
                1e-4,
            );
            assert_close(
                &what("prior"),
                &column(&|i| Some(i.prior)),
                &reference(&format!("{name}.prior")),
                1e-4,
            );
            assert_close(
                &what("grad norm"),
                &column(&|i| i.grad_norm),
                &reference(&format!("{name}.grad_norm")),
                1e-3,
            );
            // The loss moves by ~1e-2 per iteration on ~19.5: compare it absolutely.
            for (i, (got, want)) in t
                .iter()
                .zip(reference(&format!("{name}.reward_loss")))
                .enumerate()
            {
                assert!(
                    (got.reward_loss - want).abs() < 2e-4,
                    "{} [{i}]: {} vs {want}",
                    what("loss"),
                    got.reward_loss
                );
            }
            let best = reference_json()["runs"][name]["best_iteration"]
                .as_u64()
                .unwrap() as usize;
            assert_eq!(out.best_iteration, best, "{}", what("best iteration"));
            assert_eq!(out.best().map(|b| b.iteration), Some(best));
            assert_close(
                &what("best noise"),
                &out.best_noise.values,
                &reference(&format!("{name}.best_noise")),
                1e-3,
            );
        }
    }
}

/// The reward loss's gradient: against PyTorch's at the start and against central differences
/// along it and along another direction.
#[test]
fn noise_gradient_matches_torch_and_finite_differences() {
    let ad = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (pipeline, mut rewards) = setup(&ad, [0.1, 1.0]);
    let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
        .expect("objective");
    let z = start_noise().values;
    let g = block_on(objective.evaluate(&z, true))
        .expect("eval")
        .gradient
        .expect("gradient");
    // torch's includes the prior: 0.01 (1 - (d - 1) / |z|^2) z.
    let d = z.len() as f32;
    let n2: f32 = z.iter().map(|v| v * v).sum();
    let with_prior: Vec<f32> = g
        .iter()
        .zip(&z)
        .map(|(gi, zi)| gi + 0.01 * (1.0 - (d - 1.0) / n2) * zi)
        .collect();
    assert_close(
        "gradient vs torch",
        &with_prior,
        &reference("sgd.first_grad"),
        1e-3,
    );

    let loss_at = |dir: &[f32], h: f32| {
        let moved: Vec<f32> = z.iter().zip(dir).map(|(a, b)| a + h * b).collect();
        block_on(objective.evaluate(&moved, false))
            .expect("eval")
            .scores
            .loss
    };
    let g_norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
    let along: Vec<f32> = g.iter().map(|v| v / g_norm).collect();
    let mut rng = tastebud_core::noise::Rng::new(5);
    let other = rng.gaussian(z.len());
    let o_norm = other.iter().map(|v| v * v).sum::<f32>().sqrt();
    let other: Vec<f32> = other.iter().map(|v| v / o_norm).collect();
    for (name, dir) in [("along the gradient", &along), ("random direction", &other)] {
        let h = 0.05;
        let fd = (loss_at(dir, h) - loss_at(dir, -h)) / (2.0 * h);
        let analytic: f32 = g.iter().zip(dir.iter()).map(|(a, b)| a * b).sum();
        assert!(
            (fd - analytic).abs() <= 2e-3 * g_norm,
            "{name}: finite difference {fd} vs gradient {analytic}"
        );
    }
}

#[test]
fn stopping_previews_and_determinism() {
    let ad = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (pipeline, mut rewards) = setup(&ad, [0.1, 1.0]);
    let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
        .expect("objective");
    let config = RenoConfig {
        iterations: 6,
        preview_every: Some(2),
        ..RenoConfig::default()
    };
    let mut previews = vec![];
    let out = block_on(reno(
        &objective,
        start_noise(),
        &config,
        &mut |it, image| {
            if let Some(image) = image {
                previews.push((it.iteration, image.width, image.height));
            }
            if it.iteration == 2 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        },
    ))
    .expect("reno");
    assert_eq!(out.trajectory.len(), 3);
    assert!(
        out.stopped
            .as_deref()
            .is_some_and(|s| s.contains("after iteration 2"))
    );
    assert_eq!(previews, vec![(0, 40, 48), (2, 40, 48)]);
    assert!(out.best_iteration <= 2);

    let full = RenoConfig {
        iterations: 4,
        ..RenoConfig::default()
    };
    let a = run(&objective, &full);
    let b = run(&objective, &full);
    assert_eq!(a.trajectory, b.trajectory);
    assert_eq!(a.best_noise, b.best_noise);
    // ReNO's default step (lr 5, clip 0.1) improves the tiny rewards from the first step.
    assert!(a.trajectory[1].reward_loss < a.trajectory[0].reward_loss);
}

#[test]
fn bad_settings_are_errors() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let ad = cpu.clone().autodiff();
    let (pipeline, mut rewards) = setup(&ad, [0.0, 0.0]);
    let err = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
        .err()
        .expect("all weights zero");
    assert!(
        err.to_string().contains("every reward weight is 0"),
        "{err}"
    );

    let (pipeline, mut rewards) = setup(&ad, [0.1, 1.0]);
    assert!(NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 3, 6, 5], 1, 0).is_err());
    assert!(NoiseObjective::new(&pipeline, &mut rewards, "", &[1, 4, 6, 5], 1, 0).is_err());
    let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
        .expect("objective");
    for bad in [
        RenoConfig {
            iterations: 0,
            ..RenoConfig::default()
        },
        RenoConfig {
            lr: f32::NAN,
            ..RenoConfig::default()
        },
        RenoConfig {
            grad_clip: 0.0,
            ..RenoConfig::default()
        },
        RenoConfig {
            prior_weight: -1.0,
            ..RenoConfig::default()
        },
        RenoConfig {
            optimizer: Optimizer::Sgd {
                momentum: 1.5,
                nesterov: true,
            },
            ..RenoConfig::default()
        },
    ] {
        assert!(
            block_on(reno(&objective, start_noise(), &bad, &mut |_, _| {
                Flow::Continue
            }))
            .is_err(),
            "{bad:?}"
        );
    }
    let mut nan = start_noise();
    nan.values[3] = f32::NAN;
    let err = block_on(reno(
        &objective,
        nan,
        &RenoConfig::default(),
        &mut |_, _| Flow::Continue,
    ))
    .expect_err("NaN noise");
    assert!(err.to_string().contains("value 3"), "{err}");

    // Without autodiff there is no gradient, and the error says how to get one.
    let (pipeline, mut rewards) = setup(&cpu, [0.1, 1.0]);
    let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
        .expect("objective");
    let err = block_on(reno(
        &objective,
        start_noise(),
        &RenoConfig::default(),
        &mut |_, _| Flow::Continue,
    ))
    .expect_err("not autodiff");
    assert!(err.to_string().contains("autodiff"), "{err}");
}

/// burn's gradient checkpointing (recomputing memory-bound activations in the backward pass,
/// `tastebud optimize --gradient-checkpointing`) gives the same trajectory.
#[test]
fn gradient_checkpointing_changes_nothing() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let config = RenoConfig {
        iterations: 3,
        ..RenoConfig::default()
    };
    let mut runs = vec![];
    for device in [
        cpu.clone().autodiff(),
        cpu.autodiff().gradient_checkpointing(),
    ] {
        let (pipeline, mut rewards) = setup(&device, [0.1, 1.0]);
        let objective = NoiseObjective::new(&pipeline, &mut rewards, PROMPT, &[1, 4, 6, 5], 1, 0)
            .expect("objective");
        runs.push(run(&objective, &config));
    }
    for (a, b) in runs[0].trajectory.iter().zip(&runs[1].trajectory) {
        assert_close("reward loss", &[b.reward_loss], &[a.reward_loss], 1e-6);
        assert_close("noise norm", &[b.noise_norm], &[a.noise_norm], 1e-6);
    }
}
