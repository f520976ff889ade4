//! `tastebud optimize`: steer a one-step model's image toward rewards by optimising its initial
//! noise (ReNO), with a progress bar or a JSON report of every iteration.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tastebud_core::ModelFiles;
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{LoadedDecoder, decoder_files, to_rgb8};
use tastebud_core::reno::{Flow, Iteration, NoiseObjective, Optimizer, RenoConfig, reno};
use tastebud_core::rewards::ImageScores;
use tastebud_core::search;

use crate::generate::{
    Gradients, ModelArgs, NoiseArgs, Timings, bar, load, ms, peak_rss_mib, read_groups,
};
use crate::score::{load_rewards, parse_rewards, read_reward_files};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    /// ReNO: gradient steps on the noise.
    Reno,
    /// Sample N noises, keep the best.
    BestOfN,
    /// Search around a pivot noise.
    ZeroOrder,
    /// ReNO from several seeds, keep the best.
    Carinox,
    /// Score many seeds through a cheap proxy decoder, the best few in full.
    Pruned,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OptimizerName {
    Sgd,
    Adam,
}

#[derive(Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to draw (cut to the text encoders' length if longer, as diffusers does).
    #[arg(long)]
    prompt: String,
    /// A reward: NAME=PATH[,PATH...][:WEIGHT], as for `tastebud score`. Repeat to combine.
    /// Default: the shipped shapes-world CLIP (models/shapes/clip).
    #[arg(long = "reward", value_name = "NAME=PATH[:WEIGHT]")]
    rewards: Vec<String>,
    #[arg(long, value_enum, default_value = "reno")]
    method: Method,
    /// Search budget in generator+reward forward passes (a gradient pass counts 3): for
    /// best-of-n, zero-order and carinox, so methods compare at equal cost.
    #[arg(long, default_value_t = 50.0)]
    budget: f32,
    /// best-of-n: candidates scored per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// zero-order: candidates per round around the pivot.
    #[arg(long, default_value_t = 4)]
    neighbours: usize,
    /// zero-order: how far a candidate moves (0..1; the noise stays unit Gaussian).
    #[arg(long, default_value_t = 0.2)]
    step: f32,
    /// pruned: the cheap decoder (e.g. a TAESD folder) candidates are first scored through.
    #[arg(long)]
    proxy_decoder: Option<PathBuf>,
    /// pruned: candidates scored in full after the proxy pass.
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// pruned: cost of one proxy pass, in full forward passes (an estimate: time both on your
    /// device; TAESD instead of SD's VAE costs about a third at 512 px on a CPU).
    #[arg(long, default_value_t = 0.5)]
    proxy_cost: f32,
    /// carinox: seeds scored before optimising.
    #[arg(long, default_value_t = 8)]
    explore: usize,
    /// carinox: how many of the best explored seeds ReNO starts from.
    #[arg(long, default_value_t = 2)]
    seeds: usize,
    /// Iterations (scored iterates; one fewer steps).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 5.0)]
    lr: f32,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerName,
    /// SGD momentum (Nesterov unless --no-nesterov).
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long)]
    no_nesterov: bool,
    /// Largest gradient norm ("inf" for no clipping).
    #[arg(long, default_value_t = 0.1)]
    grad_clip: f32,
    /// Weight of the chi-norm prior that keeps the noise Gaussian-like (0 for none).
    #[arg(long, default_value_t = 0.01)]
    prior_weight: f32,
    #[command(flatten)]
    noise: NoiseArgs,
    /// The best image, as PNG.
    #[arg(long)]
    out: PathBuf,
    /// Save the image every K iterations into DIR (iter-000.png, ...).
    #[arg(long, num_args = 2, value_names = ["K", "DIR"])]
    save_every: Option<Vec<String>>,
    /// Save the best noise as .npy (give it to --noise of generate or optimize).
    #[arg(long)]
    save_noise: Option<PathBuf>,
    /// Recompute memory-bound activations in the backward pass instead of keeping them (burn's
    /// gradient checkpointing): less memory, more time.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Print a JSON report (every iteration's rewards) instead of a summary.
    #[arg(long)]
    json: bool,
}

fn extension_is(path: &std::path::Path, ext: &str) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(ext)
}

/// Set by the first Ctrl-C: the run stops after the current step and keeps its best so far.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// First Ctrl-C: stop gracefully; a second one: quit at once.
fn catch_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will quit without saving ({e})");
    }
}

fn flow() -> Flow {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

pub fn optimize(args: &OptimizeArgs) -> Result<()> {
    if args.method != Method::Reno && args.save_every.is_some() {
        bail!("--save-every: only --method reno saves its iterates");
    }
    if !extension_is(&args.out, "png") {
        bail!("--out {}: must be a .png file", args.out.display());
    }
    if let Some(path) = &args.save_noise
        && !extension_is(path, "npy")
    {
        bail!("--save-noise {}: must be a .npy file", path.display());
    }
    let save_every = match &args.save_every {
        Some(v) => {
            let k: usize =
                v[0].parse().ok().filter(|&k| k > 0).with_context(|| {
                    format!("--save-every {}: K must be a positive integer", v[0])
                })?;
            let dir = PathBuf::from(&v[1]);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--save-every: creating {}", dir.display()))?;
            Some((k, dir))
        }
        None => None,
    };
    let config = RenoConfig {
        iterations: args.iters,
        lr: args.lr,
        optimizer: match args.optimizer {
            OptimizerName::Sgd => Optimizer::Sgd {
                momentum: args.momentum,
                nesterov: !args.no_nesterov,
            },
            OptimizerName::Adam => Optimizer::ADAM,
        },
        grad_clip: args.grad_clip,
        prior_weight: args.prior_weight,
        steps: args.noise.steps,
        seed: args.noise.seed,
        clip_per_reward: false,
        preview_every: save_every.as_ref().map(|(k, _)| *k),
    };
    let search_method = match args.method {
        Method::Reno => None,
        Method::BestOfN => Some(search::Method::BestOfN { batch: args.batch }),
        Method::ZeroOrder => Some(search::Method::ZeroOrder {
            neighbours: args.neighbours,
            step: args.step,
        }),
        Method::Pruned => Some(search::Method::Pruned {
            keep: args.keep,
            batch: args.batch,
            proxy_cost: args.proxy_cost,
        }),
        Method::Carinox => Some(search::Method::Carinox {
            explore: args.explore,
            seeds: args.seeds,
            reno: config.clone(),
        }),
    };
    let request = args.noise.request(&args.prompt)?;
    let specs = parse_rewards(&args.rewards)?;
    let reward_files = specs
        .iter()
        .map(read_reward_files)
        .collect::<Result<Vec<_>>>()?;

    let mut t = Timings::default();
    if (args.method == Method::Pruned) != args.proxy_decoder.is_some() {
        bail!("--proxy-decoder goes with --method pruned (and pruning needs it)");
    }
    let gradients = if matches!(
        args.method,
        Method::BestOfN | Method::ZeroOrder | Method::Pruned
    ) {
        Gradients::None
    } else if args.gradient_checkpointing {
        Gradients::Checkpointed
    } else {
        Gradients::Kept
    };
    let (pipeline, device) = load(&args.model, args.json, gradients, &mut t)?;
    let started = Instant::now();
    let mut rewards = load_rewards(&specs, reward_files, &device.device)?;
    let load_rewards_ms = ms(started);
    let (height, width, noise) = pipeline.prepare(&request)?;
    let proxy = match &args.proxy_decoder {
        Some(dir) => {
            let mut files = ModelFiles::new(dir.display().to_string());
            read_groups(dir, &decoder_files(), &mut files, &bar(true, ""))?;
            Some(LoadedDecoder::from_files(files, None, &device.device)?)
        }
        None => None,
    };
    let labels: Vec<String> = rewards.terms().iter().map(|t| t.label.clone()).collect();
    let objective = NoiseObjective::new(
        &pipeline,
        &mut rewards,
        &args.prompt,
        &noise.shape,
        args.noise.steps,
        args.noise.seed,
    )?;
    let objective = match &proxy {
        Some(decoder) => objective.with_proxy(decoder),
        None => objective,
    };

    catch_ctrl_c();
    let started = Instant::now();
    let finished = match &search_method {
        None => run_reno(args, &objective, noise, &config, &save_every)?,
        Some(method) => run_search(args, &objective, &noise.shape, method)?,
    };
    let optimize_ms = ms(started);

    // The best noise's image, generated again.
    let best = pollster::block_on(objective.evaluate(&finished.best_noise.values, false))?;
    let image = pollster::block_on(to_rgb8(best.image))?;
    let method = args
        .method
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let png = image.to_png(&[
        ("prompt", args.prompt.clone()),
        ("model", args.model.describe()),
        (
            "noise",
            format!(
                "{method} from {}: {}",
                args.noise.source(),
                finished.best_origin
            ),
        ),
        ("rewards", args.rewards.join(" ")),
        (
            "software",
            format!("tastebud {}", env!("CARGO_PKG_VERSION")),
        ),
    ])?;
    crate::write_atomic(&args.out, &png)?;
    if let Some(path) = &args.save_noise {
        crate::write_atomic(path, &finished.best_noise.to_npy())?;
    }
    let per_step = optimize_ms / finished.count.max(1) as f64;
    if args.json {
        let mut out = json!({
            "out": args.out.display().to_string(),
            "width": width,
            "height": height,
            "method": method,
            "labels": labels,
            "best": finished.best_origin,
            "best_scores": best.scores,
            "stopped": finished.stopped,
            "device": device.describe(),
            "peak_rss_mib": peak_rss_mib(),
            "ms": {"read": t.read, "load_pipeline": t.load, "load_rewards": load_rewards_ms,
                   "optimize": optimize_ms, "per_step": per_step},
        });
        if let (Some(out), Some(details)) = (out.as_object_mut(), finished.details.as_object()) {
            out.extend(details.clone());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(why) = &finished.stopped {
        eprintln!("stopped early: {why}");
    }
    println!("{:<14} {:>12} {:>12}", "", "start", "best");
    for (i, label) in labels.iter().enumerate() {
        println!(
            "{label:<14} {:>12.4} {:>12.4}",
            finished.start.rewards[i], best.scores.rewards[i]
        );
    }
    println!(
        "{:<14} {:>12.4} {:>12.4}",
        "reward loss", finished.start.loss, best.scores.loss
    );
    println!(
        "best: {} ({} steps, {per_step:.0} ms each); wrote {}",
        finished.best_origin,
        finished.count,
        args.out.display()
    );
    Ok(())
}

/// What a method found, for the report.
struct Finished {
    best_noise: Noise,
    best_origin: String,
    /// The first scored noise (the starting point).
    start: ImageScores,
    /// Iterations or search steps.
    count: usize,
    stopped: Option<String>,
    /// Method-specific JSON fields (trajectory, config, budget).
    details: Value,
}

fn run_reno(
    args: &OptimizeArgs,
    objective: &NoiseObjective,
    noise: Noise,
    config: &RenoConfig,
    save_every: &Option<(usize, PathBuf)>,
) -> Result<Finished> {
    let progress = bar(
        args.json,
        "{spinner} iteration {pos}/{len} [{bar:30}] {msg} ({elapsed}, {per_sec})",
    );
    progress.set_length(args.iters as u64);
    let mut save_error = None;
    let outcome = pollster::block_on(reno(objective, noise, config, &mut |it, image| {
        progress.set_position(it.iteration as u64 + 1);
        progress.set_message(format!(
            "loss {:.4} (best {:.4} at {})",
            it.reward_loss, it.best_loss, it.best_iteration
        ));
        if let (Some(image), Some((_, dir))) = (image, save_every) {
            let path = dir.join(format!("iter-{:03}.png", it.iteration));
            let written = image
                .to_png(&[("prompt", args.prompt.clone())])
                .map_err(anyhow::Error::from)
                .and_then(|png| Ok(std::fs::write(&path, png)?));
            if let Err(e) = written {
                save_error = Some(e.context(format!("writing {}", path.display())));
                return Flow::Stop;
            }
        }
        flow()
    }))?;
    progress.finish_and_clear();
    if let Some(e) = save_error {
        return Err(e);
    }
    let weights = objective.weights();
    let scores = |it: &Iteration| ImageScores::new(it.rewards.clone(), &weights, it.reward_loss);
    let start = outcome
        .trajectory
        .first()
        .map(scores)
        .context("no iteration ran")?;
    Ok(Finished {
        best_origin: format!("iteration {}", outcome.best_iteration),
        best_noise: outcome.best_noise,
        start,
        count: outcome.trajectory.len(),
        stopped: outcome.stopped,
        details: json!({
            "config": config,
            "iterations": outcome.trajectory,
            "best_iteration": outcome.best_iteration,
        }),
    })
}

fn run_search(
    args: &OptimizeArgs,
    objective: &NoiseObjective,
    shape: &[usize],
    method: &search::Method,
) -> Result<Finished> {
    let progress = bar(
        args.json,
        "{spinner} spent {pos}/{len} forward passes [{bar:30}] {msg} ({elapsed})",
    );
    progress.set_length(args.budget as u64);
    let outcome = pollster::block_on(search::search(
        objective,
        shape,
        args.noise.seed,
        method,
        args.budget,
        &mut |step| {
            progress.set_position(step.spent as u64);
            progress.set_message(format!(
                "{}: loss {:.4} (best {:.4})",
                step.origin, step.reward_loss, step.best_loss
            ));
            flow()
        },
    ))?;
    progress.finish_and_clear();
    let first = outcome
        .steps
        .iter()
        .find(|s| !s.proxy)
        .context("no candidate was scored in full")?;
    let weights = objective.weights();
    let start = ImageScores::new(first.rewards.clone(), &weights, first.reward_loss);
    Ok(Finished {
        best_noise: outcome.best_noise,
        best_origin: outcome.best_origin,
        start,
        count: outcome.steps.len(),
        stopped: outcome.stopped,
        details: json!({
            "search": method,
            "budget": args.budget,
            "spent": outcome.spent,
            "steps": outcome.steps,
        }),
    })
}
