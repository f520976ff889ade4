//! `tastebud optimize`: steer a one-step model's image toward rewards by optimising its initial
//! noise (ReNO), with a progress bar or a JSON report of every iteration.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{LoadedDecoder, decoder_files, to_rgb8};
use tastebud_core::pipeline::{Pipeline, Request, RgbImage};
use tastebud_core::reno::{Flow, Iteration, NoiseObjective, Optimizer, RenoConfig, reno};
use tastebud_core::rewards::ImageScores;
use tastebud_core::rewards::RewardSet;
use tastebud_core::search;
use tastebud_core::{ComputeDevice, ModelFiles};

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
    #[arg(long, required_unless_present = "prompts")]
    prompt: Option<String>,
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
    /// Default with the shipped generator: its proxy decoder (models/shapes/proxy).
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
    #[arg(long, required_unless_present = "prompts")]
    out: Option<PathBuf>,
    #[command(flatten)]
    prompt_file: crate::batch::BatchArgs,
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

fn flow() -> Flow {
    if crate::INTERRUPTED.load(Ordering::SeqCst) {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// The method's settings for one (seed, steps).
fn methods(
    args: &OptimizeArgs,
    seed: u64,
    steps: usize,
    preview_every: Option<usize>,
) -> (RenoConfig, Option<search::Method>) {
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
        steps,
        seed,
        clip_per_reward: false,
        preview_every,
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
    (config, search_method)
}

/// The generator, the rewards and the proxy decoder, loaded once for any number of images.
struct Loaded {
    pipeline: Pipeline,
    device: ComputeDevice,
    rewards: RewardSet,
    proxy: Option<LoadedDecoder>,
    timings: Timings,
    load_rewards_ms: f64,
}

/// The proxy decoder `pruned` scores candidates through: the one given, else the shipped
/// generator's (`models/shapes/proxy`) when the generator is the shipped one.
fn proxy_folder(args: &OptimizeArgs) -> Result<Option<PathBuf>> {
    match (&args.proxy_decoder, args.method == Method::Pruned) {
        (Some(_), false) => bail!("--proxy-decoder goes with --method pruned"),
        (Some(dir), true) => Ok(Some(dir.clone())),
        (None, true) if args.model.model.is_none() => {
            Ok(Some(crate::shipped::shapes_dir().join("proxy")))
        }
        (None, true) => bail!(
            "--method pruned needs --proxy-decoder: a cheap decoder folder for this model (e.g. \
             TAESD for SD's VAE)"
        ),
        (None, false) => Ok(None),
    }
}

fn load_all(args: &OptimizeArgs, hidden: bool) -> Result<Loaded> {
    let proxy_dir = proxy_folder(args)?;
    let specs = parse_rewards(&args.rewards)?;
    let reward_files = specs
        .iter()
        .map(read_reward_files)
        .collect::<Result<Vec<_>>>()?;
    let mut timings = Timings::default();
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
    let (pipeline, device) = load(&args.model, hidden, gradients, &mut timings)?;
    let started = Instant::now();
    let rewards = load_rewards(&specs, reward_files, &device.device)?;
    let load_rewards_ms = ms(started);
    let proxy = match &proxy_dir {
        Some(dir) => {
            if args.proxy_decoder.is_none() {
                // Says which, or names where it was looked for when it is missing.
                crate::shipped::model("proxy")?;
            }
            let mut files = ModelFiles::new(dir.display().to_string());
            read_groups(dir, &decoder_files(), &mut files, &bar(true, ""))?;
            crate::shipped::verify(dir, &files)?;
            Some(LoadedDecoder::from_files(files, None, &device.device)?)
        }
        None => None,
    };
    Ok(Loaded {
        pipeline,
        device,
        rewards,
        proxy,
        timings,
        load_rewards_ms,
    })
}

/// One optimised image.
struct Optimized {
    finished: Finished,
    best: ImageScores,
    image: RgbImage,
    labels: Vec<String>,
    optimize_ms: f64,
    method: String,
    noise_note: String,
}

fn optimize_one(
    args: &OptimizeArgs,
    loaded: &mut Loaded,
    request: &Request,
    source: &str,
    save_every: &Option<(usize, PathBuf)>,
    hidden: bool,
) -> Result<Optimized> {
    let (config, search_method) = methods(
        args,
        request.seed,
        request.steps,
        save_every.as_ref().map(|(k, _)| *k),
    );
    let (_, _, noise) = loaded.pipeline.prepare(request)?;
    let labels: Vec<String> = loaded
        .rewards
        .terms()
        .iter()
        .map(|t| t.label.clone())
        .collect();
    let objective = NoiseObjective::new(
        &loaded.pipeline,
        &mut loaded.rewards,
        &request.prompt,
        &noise.shape,
        request.steps,
        request.seed,
    )?;
    let objective = match &loaded.proxy {
        Some(decoder) => objective.with_proxy(decoder),
        None => objective,
    };
    let started = Instant::now();
    let finished = match &search_method {
        None => run_reno(
            args,
            &request.prompt,
            &objective,
            noise,
            &config,
            save_every,
            hidden,
        )?,
        Some(method) => run_search(args, &objective, &noise.shape, request.seed, method, hidden)?,
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
    let noise_note = format!("{method} from {source}: {}", finished.best_origin);
    Ok(Optimized {
        finished,
        best: best.scores,
        image,
        labels,
        optimize_ms,
        method,
        noise_note,
    })
}

fn png_of(args: &OptimizeArgs, prompt: &str, done: &Optimized) -> Result<Vec<u8>> {
    Ok(done.image.to_png(&[
        ("prompt", prompt.to_string()),
        ("model", args.model.describe()),
        ("noise", done.noise_note.clone()),
        ("rewards", args.rewards.join(" ")),
        (
            "software",
            format!("tastebud {}", env!("CARGO_PKG_VERSION")),
        ),
    ])?)
}

pub fn optimize(args: &OptimizeArgs) -> Result<()> {
    if args.method != Method::Reno && args.save_every.is_some() {
        bail!("--save-every: only --method reno saves its iterates");
    }
    let (Some(prompt), Some(out)) = (&args.prompt, &args.out) else {
        return optimize_batch(args);
    };
    if !extension_is(out, "png") {
        bail!("--out {}: must be a .png file", out.display());
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
    let request = args.noise.request(prompt)?;
    let mut loaded = load_all(args, args.json)?;
    crate::catch_ctrl_c();
    let done = optimize_one(
        args,
        &mut loaded,
        &request,
        &args.noise.source(),
        &save_every,
        args.json,
    )?;
    let (finished, best) = (&done.finished, &done.best);
    crate::write_atomic(out, &png_of(args, prompt, &done)?)?;
    if let Some(path) = &args.save_noise {
        crate::write_atomic(path, &finished.best_noise.to_npy())?;
    }
    let per_step = done.optimize_ms / finished.count.max(1) as f64;
    let t = &loaded.timings;
    if args.json {
        let mut report = json!({
            "out": out.display().to_string(),
            "width": done.image.width,
            "height": done.image.height,
            "method": done.method,
            "labels": done.labels,
            "best": finished.best_origin,
            "best_scores": best,
            "stopped": finished.stopped,
            "device": loaded.device.describe(),
            "peak_rss_mib": peak_rss_mib(),
            "ms": {"read": t.read, "load_pipeline": t.load, "load_rewards": loaded.load_rewards_ms,
                   "optimize": done.optimize_ms, "per_step": per_step},
        });
        if let (Some(report), Some(details)) =
            (report.as_object_mut(), finished.details.as_object())
        {
            report.extend(details.clone());
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Some(why) = &finished.stopped {
        eprintln!("stopped early: {why}");
    }
    println!("{:<14} {:>12} {:>12}", "", "start", "best");
    for (i, label) in done.labels.iter().enumerate() {
        println!(
            "{label:<14} {:>12.4} {:>12.4}",
            finished.start.rewards[i], best.rewards[i]
        );
    }
    println!(
        "{:<14} {:>12.4} {:>12.4}",
        "reward loss", finished.start.loss, best.loss
    );
    println!(
        "best: {} ({} steps, {per_step:.0} ms each); wrote {}",
        finished.best_origin,
        finished.count,
        out.display()
    );
    Ok(())
}

/// `optimize --prompts FILE --out-dir DIR`: every (prompt, seed) of the file with the same
/// method and rewards, the models loaded once. Each record holds the start and best rewards and
/// the time spent; a job cut short by Ctrl-C is not written, so a resumed run equals an
/// uninterrupted one.
fn optimize_batch(args: &OptimizeArgs) -> Result<()> {
    if args.save_every.is_some() || args.save_noise.is_some() {
        bail!(
            "--save-every and --save-noise are for one image; --prompts runs write each best image"
        );
    }
    let (config, search_method) = methods(args, 0, args.noise.steps, None);
    let settings = json!({
        "command": "optimize",
        "model": args.model.describe(),
        "decoder": args.model.decoder.as_ref().map(|d| d.display().to_string()),
        "rewards": args.rewards,
        "method": args.method.to_possible_value().map(|v| v.get_name().to_string()),
        "reno": config,
        "search": search_method,
        "budget": args.budget,
        "proxy_decoder": proxy_folder(args)?.map(|d| d.display().to_string()),
        "width": args.noise.width,
        "height": args.noise.height,
    });
    let batch = crate::batch::Batch::open(&args.prompt_file, settings)?;
    let mut loaded = load_all(args, false)?;
    eprintln!(
        "optimizing {} images on {}",
        batch.jobs.len(),
        loaded.device.describe()
    );
    let stop = crate::catch_ctrl_c();
    batch.run(stop, |job| {
        let request = job.request(&args.noise);
        let done = optimize_one(
            args,
            &mut loaded,
            &request,
            &format!("seed {}", job.seed),
            &None,
            true,
        )?;
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let png = png_of(args, &job.prompt, &done)?;
        let f = &done.finished;
        let record = json!({
            "steps": request.steps,
            "method": done.method,
            "labels": done.labels,
            "start_scores": f.start,
            "best_scores": done.best,
            "best": f.best_origin,
            "count": f.count,
            "ms": done.optimize_ms,
        });
        Ok(Some((png, record)))
    })?;
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
    prompt: &str,
    objective: &NoiseObjective,
    noise: Noise,
    config: &RenoConfig,
    save_every: &Option<(usize, PathBuf)>,
    hidden: bool,
) -> Result<Finished> {
    let progress = bar(
        hidden,
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
                .to_png(&[("prompt", prompt.to_string())])
                .map_err(anyhow::Error::from)
                .and_then(|png| crate::write_atomic(&path, &png));
            if let Err(e) = written {
                save_error = Some(e);
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
    seed: u64,
    method: &search::Method,
    hidden: bool,
) -> Result<Finished> {
    let progress = bar(
        hidden,
        "{spinner} spent {pos}/{len} forward passes [{bar:30}] {msg} ({elapsed})",
    );
    progress.set_length(args.budget as u64);
    let outcome = pollster::block_on(search::search(
        objective,
        shape,
        seed,
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
