//! `tastebud`: the command-line front end. Reads files, picks a device, calls the core.

mod generate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tastebud_core::models::clip::{CLIP_FILES, Clip};
use tastebud_core::preprocess::decode_rgb;
use tastebud_core::{ComputeDevice, DeviceChoice, ModelFiles, device};

#[derive(Parser)]
#[command(
    name = "tastebud",
    version,
    about = "Generate, score and steer images on your own GPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an image from a prompt with a one-step diffusers snapshot (SD-Turbo, SDXL-Turbo, SD 1.x/2.x).
    Generate(generate::GenerateArgs),
    /// Time each stage of generation and report peak memory (JSON).
    Bench(generate::BenchArgs),
    /// Score images against a prompt with a CLIP model (cosine and logit-scaled CLIPScore).
    Score(ScoreArgs),
    /// List the devices Tastebud can run on.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ScoreArgs {
    /// A transformers CLIP folder (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// The text to score the images against.
    #[arg(long)]
    prompt: String,
    /// Where to run: auto (a hardware GPU, else CPU), gpu (any wgpu adapter) or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Cut prompts longer than the text encoder takes instead of refusing them.
    #[arg(long)]
    truncate: bool,
    /// Print JSON (scores, device, load and score times) instead of a table.
    #[arg(long)]
    json: bool,
    /// Score the images this many times and report the median time (for benchmarks).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => generate::generate(&args),
        Command::Bench(args) => generate::bench(&args),
        Command::Score(args) => score(&args),
        Command::Devices { json } => devices(json),
    }
}

/// Reads the files of `names` that exist in `folder`.
fn read_model_folder(folder: &Path, names: &[&str]) -> Result<ModelFiles> {
    if !folder.is_dir() {
        bail!(
            "{}: not a folder (expected a model folder with config.json)",
            folder.display()
        );
    }
    let mut files = ModelFiles::new(folder.display().to_string());
    for name in names {
        let path = folder.join(name);
        if path.is_file() {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.insert(*name, bytes);
        }
    }
    Ok(files)
}

pub(crate) fn open_device(choice: &str) -> Result<ComputeDevice> {
    let choice: DeviceChoice = choice.parse()?;
    let device = pollster::block_on(device::open(choice))?;
    eprintln!("device: {}", device.describe());
    Ok(device)
}

fn score(args: &ScoreArgs) -> Result<()> {
    // Check the cheap things (files, prompt) before starting a device or loading weights.
    let decoded = args
        .images
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
            Ok(decode_rgb(&path.display().to_string(), &bytes)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let files = read_model_folder(&args.model, CLIP_FILES)?;
    let device = open_device(&args.device)?;
    let started = Instant::now();
    let clip = Clip::from_files(files, &device.device)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::new();
    let mut scores = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        scores = pollster::block_on(clip.score(&args.prompt, &decoded, args.truncate))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let score_ms = times[times.len() / 2];
    eprintln!(
        "load {load_ms:.0} ms, score {score_ms:.0} ms (median of {})",
        times.len()
    );
    if args.json {
        let rows: Vec<_> = args
            .images
            .iter()
            .zip(&scores)
            .map(|(path, s)| json!({"image": path.display().to_string(), "cosine": s.cosine, "logit": s.logit}))
            .collect();
        let out = json!({
            "model": args.model.display().to_string(),
            "prompt": args.prompt,
            "device": device.describe(),
            "logit_scale": clip.logit_scale,
            "scores": rows,
            "load_ms": load_ms,
            "score_ms": score_ms,
            "runs": times.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{:>10}  {:>10}  image", "cosine", "score");
        for (path, s) in args.images.iter().zip(&scores) {
            println!("{:>10.6}  {:>10.4}  {}", s.cosine, s.logit, path.display());
        }
    }
    Ok(())
}

fn devices(json: bool) -> Result<()> {
    let adapters = pollster::block_on(device::list_adapters());
    if json {
        let out = json!({"cpu": "flex", "wgpu_adapters": adapters});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("cpu   flex (burn's CPU backend)  --device cpu");
    if adapters.is_empty() {
        println!("gpu   no wgpu adapter found (install a Vulkan/Metal/DX12 driver)");
    }
    for a in &adapters {
        let note = if a.is_hardware() {
            ""
        } else {
            "  (software rasterizer: auto skips it)"
        };
        println!(
            "gpu   {} [{}, {}] {}{}  --device gpu",
            a.name, a.api, a.kind, a.driver, note
        );
    }
    Ok(())
}
