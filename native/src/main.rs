//! `tastebud`: the command-line front end. Reads files, picks a device, calls the core.

mod batch;
mod generate;
mod optimize;
mod personalize;
mod personalize_bench;
mod quantize;
mod score;
mod shapes;
mod shipped;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tastebud_core::{ComputeDevice, DeviceChoice, Precision, device};

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
    /// Learn one person's taste from their pairwise choices, and use it as a reward.
    Personalize {
        #[command(subcommand)]
        command: personalize::PersonalizeCommand,
    },
    /// Write a model folder with its weights quantized (GGUF: q8_0, q5_1, q5_0, q4_1, q4_0), loadable by every command.
    Quantize(quantize::QuantizeArgs),
    /// Judge pictures of the shapes world against a prompt (GenEval's rules), with reasons.
    Judge(shapes::JudgeArgs),
    /// The shapes world: renders of prompts, training sets, the evaluation suite.
    Shapes {
        #[command(subcommand)]
        command: shapes::ShapesCommand,
    },
    /// List the devices Tastebud can run on.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Generate(args) => generate::generate(&args),
        Command::Bench(args) => generate::bench(&args),
        Command::Score(args) => score::score(&args),
        Command::Optimize(args) => optimize::optimize(&args),
        Command::Personalize { command } => personalize::run(&command),
        Command::Quantize(args) => quantize::quantize(&args),
        Command::Judge(args) => shapes::judge_images(&args),
        Command::Shapes { command } => shapes::run(&command),
        Command::Devices { json } => devices(json),
    }
}

/// Writes through a temporary file and a rename, so a failed or interrupted write never leaves
/// a torn file behind.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    // Named per process: shards writing into one folder never share a temporary file.
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    // Flushed to the disk before the rename, so a crash or power cut after it cannot leave a
    // renamed but empty file; a failed write (a full disk) removes its temporary file.
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Set by the first Ctrl-C: long runs stop after the current step (or image) and keep their work.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// First Ctrl-C: stop gracefully; a second one: quit at once.
pub(crate) fn catch_ctrl_c() -> &'static AtomicBool {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will quit without saving ({e})");
    }
    &INTERRUPTED
}

/// The flags behind each way to need less memory, for an out-of-memory error.
const MEMORY_FLAGS: &str = "flags: --dtype f16, --decoder <a TAESD folder>, smaller --width and \
                            --height, a smaller --batch, --gradient-checkpointing";

/// On a machine without a display, Mesa's Vulkan device-select layer (an implicit layer every
/// Mesa install enables) tries to reach a Wayland compositor when devices are listed and prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice, though nothing
/// failed. With no display there is nothing for it to select by: turn it off, unless the user
/// chose otherwise.
fn quiet_vulkan_without_display() {
    let no_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .all(|v| std::env::var_os(v).is_none());
    if no_display && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Every layer allocates and frees tensors of tens to hundreds of MB. glibc serves each from a
/// fresh mmap and unmaps it when freed, so every layer paid again for faulting in and zeroing
/// its pages: a third of the convolutions' time in an SD-Turbo UNet step on the CPU
/// (BENCHMARKS.md, "Where the time goes"). Serve them from the heap and keep freed memory there
/// for the next layer; peak memory was unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reuse_freed_memory() {
    // SAFETY: mallopt only changes glibc's allocation policy; it is called before any thread
    // exists and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reuse_freed_memory() {}

fn main() -> ExitCode {
    reuse_freed_memory();
    quiet_vulkan_without_display();
    let command = Cli::parse().command;
    // Some device failures (an allocation the GPU refuses mid-launch) surface as panics in the
    // backend rather than as errors: turn those into the same message as a reported one.
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| run(command))) {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            match tastebud_core::Error::readback(text) {
                e @ tastebud_core::Error::OutOfMemory(_) => Err(e.into()),
                _ => return ExitCode::from(101),
            }
        }
    };
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("Error: {error:#}");
    if matches!(
        error.downcast_ref::<tastebud_core::Error>(),
        Some(tastebud_core::Error::OutOfMemory(_))
    ) {
        eprintln!("({MEMORY_FLAGS})");
    }
    ExitCode::FAILURE
}

/// Where models run, and in what precision.
#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// Where to run: auto (a hardware GPU, else CPU), gpu (any wgpu adapter) or cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision of weights and activations: f32, or f16 (half the memory; needs shader-f16
    /// on a GPU; normalisation statistics stay f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub(crate) fn open_device(args: &DeviceArgs) -> Result<ComputeDevice> {
    let choice: DeviceChoice = args.device.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let mut device = pollster::block_on(device::open(choice))?;
    device.set_precision(precision)?;
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
