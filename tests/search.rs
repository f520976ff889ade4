//! Exploration under a budget on the tiny fixtures: best-of-N equals its candidates scored one
//! by one, zero-order search only moves to better noises, CARINOX with one reward is ReNO,
//! per-reward gradients add up to the combined one, batching never changes an image, and
//! budgets too small for a method are refused.

mod common;

use common::*;
use pollster::block_on;
use tastebud_core::burn::tensor::{Device, Tensor, TensorData};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{LoadedDecoder, Pipeline};
use tastebud_core::reno::{Flow, NoiseObjective, RenoConfig, reno};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};
use tastebud_core::search::{FORWARD_COST, GRADIENT_COST, Method, candidate_seeds, search};

const PROMPT: &str = "a photo of a cat";
const SHAPE: [usize; 4] = [1, 4, 6, 5];
const HEAD: &str = "sac+logos+ava1-l14-linearMSE.pth";

fn setup(device: &Device, with_aesthetic: bool) -> (Pipeline, RewardSet) {
    let pipeline = Pipeline::from_files(snapshot_files("sd-turbo-tiny"), device).expect("pipeline");
    let mut terms = vec![RewardTerm {
        label: "clip".into(),
        reward: rewards::load(RewardKind::Clip, model_files("clip-openai"), device).expect("clip"),
        weight: 0.1,
    }];
    if with_aesthetic {
        let mut files = model_files("clip-openai");
        let head =
            std::fs::read(fixtures().join("rewards/aesthetic-head").join(HEAD)).expect("head");
        files.insert(HEAD, head);
        terms.push(RewardTerm {
            label: "aesthetic".into(),
            reward: rewards::load(RewardKind::Aesthetic, files, device).expect("aesthetic"),
            weight: 1.0,
        });
    }
    (pipeline, RewardSet::new(terms).expect("set"))
}

fn objective<'a>(pipeline: &'a Pipeline, rewards: &'a mut RewardSet) -> NoiseObjective<'a> {
    NoiseObjective::new(pipeline, rewards, PROMPT, &SHAPE, 1, 0).expect("objective")
}

/// A search's candidates start at its own seed; searches from neighbouring seeds share no
/// other candidate (with `seed, seed + 1, ...` they shared all but one), and every seed is
/// exact as a JavaScript number.
#[test]
fn neighbouring_seeds_search_different_candidates() {
    let a = candidate_seeds(200, 50);
    let b = candidate_seeds(201, 50);
    assert_eq!((a[0], b[0]), (200, 201));
    assert_eq!(a, candidate_seeds(200, 50), "not deterministic");
    assert_eq!(
        candidate_seeds(200, 3),
        a[..3],
        "a longer list is not an extension"
    );
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 100, "shared candidates: {a:?} / {b:?}");
    assert!(all.iter().all(|&s| s < 1 << 53));
    assert_eq!(candidate_seeds(u64::MAX, 2)[0], u64::MAX);
}

#[test]
fn best_of_n_scores_like_one_at_a_time() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let (pipeline, mut rewards) = setup(&cpu, true);
    let objective = objective(&pipeline, &mut rewards);
    let method = Method::BestOfN { batch: 2 };
    let out = block_on(search(&objective, &SHAPE, 10, &method, 5.5, &mut |_| {
        Flow::Continue
    }))
    .expect("search");
    assert_eq!(out.steps.len(), 5);
    assert_eq!(out.spent, 5.0 * FORWARD_COST);
    let mut alone = vec![];
    for (step, seed) in out.steps.iter().zip(candidate_seeds(10, 5)) {
        assert_eq!(step.origin, format!("seed {seed}"));
        let z = Noise::from_seed(seed, &SHAPE).values;
        let single = block_on(objective.evaluate(&z, false))
            .expect("eval")
            .scores;
        assert_close(
            &format!("seed {seed}"),
            &[step.reward_loss],
            &[single.loss],
            1e-5,
        );
        alone.push((single.loss, seed));
    }
    let (best_loss, best_seed) = alone
        .iter()
        .copied()
        .fold((f32::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
    assert_eq!(out.best_origin, format!("seed {best_seed}"));
    assert_close("best", &[out.best_scores.loss], &[best_loss], 1e-5);
    assert_eq!(
        out.best_noise.values,
        Noise::from_seed(best_seed, &SHAPE).values
    );
}

#[test]
fn zero_order_moves_only_to_better_noises_within_budget() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let (pipeline, mut rewards) = setup(&cpu, true);
    let objective = objective(&pipeline, &mut rewards);
    let method = Method::ZeroOrder {
        neighbours: 3,
        step: 0.3,
    };
    let out = block_on(search(&objective, &SHAPE, 4, &method, 7.0, &mut |_| {
        Flow::Continue
    }))
    .expect("search");
    assert_eq!(out.steps.len(), 7);
    assert!(out.spent <= 7.0);
    let start = out.steps[0].reward_loss;
    assert_eq!(out.steps[0].origin, "pivot");
    for pair in out.steps.windows(2) {
        assert!(pair[1].best_loss <= pair[0].best_loss);
    }
    assert!(out.best_scores.loss <= start);
    let again = block_on(objective.evaluate(&out.best_noise.values, false)).expect("eval");
    assert_close(
        "best noise rescored",
        &[again.scores.loss],
        &[out.best_scores.loss],
        1e-5,
    );
    // Neighbours keep the noise unit Gaussian: their norm stays near sqrt(d).
    let n = out
        .best_noise
        .values
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt();
    assert!(
        (n / (out.best_noise.values.len() as f32).sqrt() - 1.0).abs() < 0.3,
        "{n}"
    );
}

/// With one reward and no prior, per-reward clipping then clipping the sum is ReNO's clipping:
/// CARINOX from its single explored seed is ReNO from that seed.
#[test]
fn carinox_with_one_reward_is_reno_from_the_best_seed() {
    let ad = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (pipeline, mut rewards) = setup(&ad, false);
    let objective = objective(&pipeline, &mut rewards);
    let config = RenoConfig {
        prior_weight: 0.0,
        ..RenoConfig::default()
    };
    let method = Method::Carinox {
        explore: 1,
        seeds: 1,
        reno: config.clone(),
    };
    // 1 explore + 3 gradient iterations + a last forward = 11.
    let budget = FORWARD_COST + 3.0 * GRADIENT_COST + FORWARD_COST;
    let out = block_on(search(&objective, &SHAPE, 3, &method, budget, &mut |_| {
        Flow::Continue
    }))
    .expect("carinox");
    assert_eq!(out.steps.len(), 1 + 4);
    assert_eq!(out.spent, budget);
    let plain = RenoConfig {
        iterations: 4,
        ..config
    };
    let reference = block_on(reno(
        &objective,
        Noise::from_seed(3, &SHAPE),
        &plain,
        &mut |_, _| Flow::Continue,
    ))
    .expect("reno");
    for (step, it) in out.steps[1..].iter().zip(&reference.trajectory) {
        assert_close(&step.origin, &[step.reward_loss], &[it.reward_loss], 1e-5);
    }
    assert_eq!(
        out.best_origin,
        format!("seed 3 iteration {}", reference.best_iteration)
    );
    assert_close(
        "best noise",
        &out.best_noise.values,
        &reference.best_noise.values,
        1e-5,
    );
}

#[test]
fn per_reward_gradients_add_up_to_the_combined_gradient() {
    let ad = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (pipeline, mut rewards) = setup(&ad, true);
    let objective = objective(&pipeline, &mut rewards);
    let z = Noise::from_seed(8, &SHAPE).values;
    let combined = block_on(objective.evaluate(&z, true))
        .expect("eval")
        .gradient
        .expect("gradient");
    let (_, per_term) = block_on(objective.term_gradients(&z)).expect("terms");
    assert_eq!(per_term.len(), 2);
    let sum: Vec<f32> = per_term[0]
        .as_ref()
        .expect("clip")
        .iter()
        .zip(per_term[1].as_ref().expect("aesthetic"))
        .map(|(a, b)| a + b)
        .collect();
    assert_close("sum of per-reward gradients", &sum, &combined, 1e-4);
}

/// Pruning: every seed the budget allows through TAESD, then the best two by that proxy in
/// full (VAE); only full scores win.
#[test]
fn pruning_scores_the_proxys_best_in_full() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let (pipeline, mut rewards) = setup(&cpu, true);
    let taesd = LoadedDecoder::from_files(model_files("taesd"), None, &cpu).expect("taesd");
    let pruning = objective(&pipeline, &mut rewards).with_proxy(&taesd);
    let method = Method::Pruned {
        keep: 2,
        batch: 3,
        proxy_cost: 0.25,
    };
    // (4 - 2 full passes) / 0.25 = 8 proxy passes.
    let out = block_on(search(&pruning, &SHAPE, 30, &method, 4.0, &mut |_| {
        Flow::Continue
    }))
    .expect("pruned search");
    assert_eq!(out.steps.len(), 10);
    assert_eq!(out.spent, 4.0);
    let mut proxy: Vec<(f32, u64)> = out.steps[..8]
        .iter()
        .zip(candidate_seeds(30, 8))
        .map(|(s, seed)| {
            assert_eq!(s.origin, format!("seed {seed} (proxy)"));
            assert!(s.proxy);
            (s.reward_loss, seed)
        })
        .collect();
    proxy.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(out.steps[8..].iter().all(|s| !s.proxy));
    let finalists: Vec<String> = out.steps[8..].iter().map(|s| s.origin.clone()).collect();
    assert_eq!(
        finalists,
        vec![
            format!("seed {}", proxy[0].1),
            format!("seed {}", proxy[1].1)
        ]
    );
    let best = out.steps[8..]
        .iter()
        .min_by(|a, b| a.reward_loss.total_cmp(&b.reward_loss))
        .expect("finalists");
    assert_eq!(out.best_origin, best.origin);
    let full = block_on(pruning.evaluate(&out.best_noise.values, false)).expect("eval");
    assert_close(
        "winner in full",
        &[full.scores.loss],
        &[out.best_scores.loss],
        1e-5,
    );

    let (pipeline, mut rewards) = setup(&cpu, true);
    let plain = objective(&pipeline, &mut rewards);
    let err = block_on(search(&plain, &SHAPE, 0, &method, 4.0, &mut |_| {
        Flow::Continue
    }))
    .expect_err("no proxy");
    assert!(err.to_string().contains("proxy decoder"), "{err}");
}

/// SDXL-Turbo's Euler-ancestral steps draw extra noise: a batch of two noises gives each the
/// latents it gets alone.
#[test]
fn batched_generation_equals_one_at_a_time() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let pipeline = Pipeline::from_files(snapshot_files("sdxl-turbo-tiny"), &cpu).expect("pipeline");
    let conditioning = pipeline.encode_prompt(PROMPT).expect("prompt");
    let shape = [1, 4, 5, 6];
    let a = Noise::from_seed(1, &shape).values;
    let b = Noise::from_seed(2, &shape).values;
    let run = |values: Vec<f32>, n: usize| {
        let x = Tensor::<4>::from_data(TensorData::new(values, [n, 4, 5, 6]), &cpu);
        read(
            pipeline
                .denoise_tensor(&conditioning, x, 2, 9, &mut |_, _| {})
                .expect("denoise"),
        )
    };
    let batch = run([a.clone(), b.clone()].concat(), 2);
    let (first, second) = batch.split_at(batch.len() / 2);
    assert_close("first of the batch", first, &run(a, 1), 1e-5);
    assert_close("second of the batch", second, &run(b, 1), 1e-5);
}

#[test]
fn budgets_too_small_are_refused() {
    let ad = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (pipeline, mut rewards) = setup(&ad, true);
    let objective = objective(&pipeline, &mut rewards);
    let methods = [
        (Method::BestOfN { batch: 4 }, 1.5),
        (
            Method::ZeroOrder {
                neighbours: 4,
                step: 0.1,
            },
            4.0,
        ),
        (
            Method::Carinox {
                explore: 4,
                seeds: 2,
                reno: RenoConfig::default(),
            },
            10.0,
        ),
    ];
    for (method, budget) in methods {
        let err = block_on(search(&objective, &SHAPE, 0, &method, budget, &mut |_| {
            Flow::Continue
        }))
        .expect_err("too small");
        assert!(err.to_string().contains("needs at least"), "{err}");
    }
    let err = block_on(search(
        &objective,
        &SHAPE,
        0,
        &Method::BestOfN { batch: 1 },
        f32::NAN,
        &mut |_| Flow::Continue,
    ))
    .expect_err("NaN budget");
    assert!(err.to_string().contains("budget"), "{err}");
    let bad_step = Method::ZeroOrder {
        neighbours: 2,
        step: 1.5,
    };
    assert!(
        block_on(search(&objective, &SHAPE, 0, &bad_step, 10.0, &mut |_| {
            Flow::Continue
        }))
        .is_err()
    );
}
