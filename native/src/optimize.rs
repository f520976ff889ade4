//! `tastebud optimize`: steer a one-step model's image toward rewards by optimising its initial
//! noise (ReNO), with a progress bar or a JSON report of every iteration.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use tastebud_core::pipeline::to_rgb8;
use tastebud_core::reno::{Flow, NoiseObjective, Optimizer, RenoConfig, reno};

use crate::generate::{ModelArgs, NoiseArgs, Timings, bar, load, ms};
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
    #[arg(long = "reward", required = true, value_name = "NAME=PATH[:WEIGHT]")]
    rewards: Vec<String>,
    #[arg(long, value_enum, default_value = "reno")]
    method: Method,
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
    /// Print a JSON report (every iteration's rewards) instead of a summary.
    #[arg(long)]
    json: bool,
}

fn extension_is(path: &std::path::Path, ext: &str) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(ext)
}

pub fn optimize(args: &OptimizeArgs) -> Result<()> {
    if args.method != Method::Reno {
        bail!(
            "--method {}: not implemented yet (only reno is)",
            args.method
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        );
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
        preview_every: save_every.as_ref().map(|(k, _)| *k),
    };
    let request = args.noise.request(&args.prompt)?;
    let specs = parse_rewards(&args.rewards)?;
    let reward_files = specs
        .iter()
        .map(read_reward_files)
        .collect::<Result<Vec<_>>>()?;

    let mut t = Timings::default();
    let (pipeline, device) = load(&args.model, args.json, true, &mut t)?;
    let started = Instant::now();
    let mut rewards = load_rewards(&specs, reward_files, &device.device)?;
    let load_rewards_ms = ms(started);
    let (height, width, noise) = pipeline.prepare(&request)?;
    let labels: Vec<String> = rewards.terms().iter().map(|t| t.label.clone()).collect();
    let objective = NoiseObjective::new(
        &pipeline,
        &mut rewards,
        &args.prompt,
        &noise.shape,
        args.noise.steps,
        args.noise.seed,
    )?;

    let progress = bar(
        args.json,
        "{spinner} iteration {pos}/{len} [{bar:30}] {msg} ({elapsed}, {per_sec})",
    );
    progress.set_length(args.iters as u64);
    let started = Instant::now();
    let mut save_error = None;
    let outcome = pollster::block_on(reno(&objective, noise, &config, &mut |it, image| {
        progress.set_position(it.iteration as u64 + 1);
        progress.set_message(format!(
            "loss {:.4} (best {:.4} at {})",
            it.reward_loss, it.best_loss, it.best_iteration
        ));
        if let (Some(image), Some((_, dir))) = (image, &save_every) {
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
        Flow::Continue
    }))?;
    progress.finish_and_clear();
    if let Some(e) = save_error {
        return Err(e);
    }
    let optimize_ms = ms(started);

    // The best iterate's image, generated again from its noise.
    let best = pollster::block_on(objective.evaluate(&outcome.best_noise.values, false))?;
    let image = pollster::block_on(to_rgb8(best.image))?;
    let source = args.noise.source();
    let png = image.to_png(&[
        ("prompt", args.prompt.clone()),
        ("model", args.model.model.display().to_string()),
        (
            "noise",
            format!("ReNO from {source}, iteration {}", outcome.best_iteration),
        ),
        ("rewards", args.rewards.join(" ")),
        (
            "software",
            format!("tastebud {}", env!("CARGO_PKG_VERSION")),
        ),
    ])?;
    std::fs::write(&args.out, png).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.save_noise {
        std::fs::write(path, outcome.best_noise.to_npy())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let first = outcome.trajectory.first();
    let best_it = outcome.best();
    if args.json {
        let out = json!({
            "out": args.out.display().to_string(),
            "width": width,
            "height": height,
            "method": "reno",
            "config": config,
            "labels": labels,
            "iterations": outcome.trajectory,
            "best_iteration": outcome.best_iteration,
            "best_scores": best.scores,
            "stopped": outcome.stopped,
            "device": device.describe(),
            "ms": {"read": t.read, "load_pipeline": t.load, "load_rewards": load_rewards_ms,
                   "optimize": optimize_ms,
                   "per_iteration": optimize_ms / outcome.trajectory.len().max(1) as f64},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(why) = &outcome.stopped {
        eprintln!("stopped early: {why}");
    }
    println!("{:<14} {:>12} {:>12}", "", "start", "best");
    if let (Some(first), Some(best_it)) = (first, best_it) {
        for (i, label) in labels.iter().enumerate() {
            println!(
                "{label:<14} {:>12.4} {:>12.4}",
                first.rewards[i], best_it.rewards[i]
            );
        }
        println!(
            "{:<14} {:>12.4} {:>12.4}",
            "reward loss", first.reward_loss, best_it.reward_loss
        );
    }
    println!(
        "best at iteration {} of {}; {:.0} ms per iteration; wrote {}",
        outcome.best_iteration,
        outcome.trajectory.len(),
        optimize_ms / outcome.trajectory.len().max(1) as f64,
        args.out.display()
    );
    Ok(())
}
