//! `tastebud`: the command-line front end. Reads files, picks a device, calls the core.

mod generate;
mod optimize;
mod score;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;
use tastebud_core::{ComputeDevice, DeviceChoice, device};

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
    /// Score images against a prompt with rewards (CLIPScore, PickScore, HPSv2, aesthetic, ImageReward, DINOv2), weighted.
    Score(score::ScoreArgs),
    /// Optimise the initial noise toward rewards (ReNO) and write the best image.
    Optimize(optimize::OptimizeArgs),
    /// List the devices Tastebud can run on.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => generate::generate(&args),
        Command::Bench(args) => generate::bench(&args),
        Command::Score(args) => score::score(&args),
        Command::Optimize(args) => optimize::optimize(&args),
        Command::Devices { json } => devices(json),
    }
}

pub(crate) fn open_device(choice: &str) -> Result<ComputeDevice> {
    let choice: DeviceChoice = choice.parse()?;
    let device = pollster::block_on(device::open(choice))?;
    eprintln!("device: {}", device.describe());
    Ok(device)
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
