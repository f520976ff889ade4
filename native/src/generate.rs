//! `tastebud generate` and `tastebud bench`: a diffusers snapshot, a prompt and noise (or a
//! seed) to a PNG, with per-stage timings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tastebud_core::burn::tensor::Tensor;
use tastebud_core::models::DIFFUSERS_WEIGHTS;
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{
    LoadedDecoder, MODEL_INDEX, ModelIndex, Pipeline, Request, decoder_files, to_rgb8,
};
use tastebud_core::{ComputeDevice, ModelFiles, profile, read_f32};

use crate::open_device;

#[derive(Args)]
pub struct ModelArgs {
    /// A diffusers snapshot folder (model_index.json, unet/, vae/, text_encoder/, ...).
    /// Default: the shipped shapes-world generator (models/shapes/generator).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Another image decoder folder to use instead of the snapshot's VAE (e.g. TAESD).
    #[arg(long)]
    pub decoder: Option<PathBuf>,
    /// UNet weights to use instead of the snapshot's (its unet/config.json still describes
    /// them): safetensors or GGUF, in diffusers' names or the original LDM ones, e.g. a
    /// stable-diffusion.cpp or ComfyUI-GGUF file of the same model.
    #[arg(long, value_name = "FILE")]
    pub unet: Option<PathBuf>,
    #[command(flatten)]
    device: crate::DeviceArgs,
}

/// Where generation starts: noise, steps and size.
impl ModelArgs {
    /// The snapshot folder: the one given, else the shipped generator.
    pub fn folder(&self) -> Result<PathBuf> {
        match &self.model {
            Some(path) => Ok(path.clone()),
            None => crate::shipped::model("generator"),
        }
    }

    /// The model's path, for PNG metadata and reports.
    pub fn describe(&self) -> String {
        self.model
            .clone()
            .unwrap_or_else(|| crate::shipped::shapes_dir().join("generator"))
            .display()
            .to_string()
    }
}

#[derive(Args)]
pub struct NoiseArgs {
    /// Seed for the initial noise (the same seed gives the same image on every device).
    #[arg(long, default_value_t = 0, conflicts_with = "noise")]
    pub seed: u64,
    /// Initial unit-Gaussian noise [1, C, H/8, W/8] as .npy or safetensors: gives diffusers'
    /// image for the same noise.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Sampling steps (1 to 4).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Image width in pixels (a multiple of 8; default: the noise's, else the model's).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (a multiple of 8).
    #[arg(long)]
    pub height: Option<usize>,
}

impl NoiseArgs {
    /// The request for `prompt` (reading the noise file, if any).
    pub fn request(&self, prompt: &str) -> Result<Request> {
        let noise = match &self.noise {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading noise {}", path.display()))?;
                Some(Noise::from_bytes(&path.display().to_string(), &bytes)?)
            }
            None => None,
        };
        Ok(Request {
            prompt: prompt.to_string(),
            noise,
            seed: self.seed,
            steps: self.steps,
            height: self.height,
            width: self.width,
        })
    }

    /// Where the noise came from, for PNG metadata and reports.
    pub fn source(&self) -> String {
        match &self.noise {
            Some(path) => format!("noise file {}", path.display()),
            None => format!("seed {}", self.seed),
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to draw. Prompts longer than the text encoder takes are cut, with a warning.
    #[arg(long, required_unless_present = "prompts")]
    prompt: Option<String>,
    #[command(flatten)]
    noise: NoiseArgs,
    /// The PNG to write.
    #[arg(long, required_unless_present = "prompts")]
    out: Option<PathBuf>,
    #[command(flatten)]
    prompt_file: crate::batch::BatchArgs,
    /// Print per-stage timings.
    #[arg(long, short)]
    verbose: bool,
    /// Print a JSON report (timings, sizes, device) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "a photo of a cat")]
    prompt: String,
    #[arg(long, default_value_t = 512)]
    width: usize,
    #[arg(long, default_value_t = 512)]
    height: usize,
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Timed runs after the warm-up runs (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Untimed runs first (shader compilation, allocator warm-up). 0 times the first run, cold.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
    warmup: u32,
    /// Also time each layer kind (convolutions, Linear, attention, norms, ...) in the timed
    /// runs, syncing the device around each layer (stage totals then include those waits).
    #[arg(long)]
    profile: bool,
}

/// Reads a snapshot: `model_index.json`, then the first existing file of each group it lists.
fn read_snapshot(folder: &Path, progress: &ProgressBar) -> Result<ModelFiles> {
    let index_path = folder.join(MODEL_INDEX);
    if !index_path.is_file() {
        bail!(
            "{}: not a diffusers snapshot (no {MODEL_INDEX})",
            folder.display()
        );
    }
    let index_bytes = std::fs::read(&index_path)?;
    let index = ModelIndex::parse(&index_path.display().to_string(), &index_bytes)?;
    let mut files = ModelFiles::new(folder.display().to_string());
    files.insert(MODEL_INDEX, index_bytes);
    read_groups(folder, &index.files(), &mut files, progress)?;
    Ok(files)
}

pub(crate) fn read_groups(
    folder: &Path,
    groups: &[Vec<String>],
    files: &mut ModelFiles,
    progress: &ProgressBar,
) -> Result<()> {
    let chosen: Vec<&String> = groups
        .iter()
        .filter_map(|g| g.iter().find(|name| folder.join(name).is_file()))
        .collect();
    let total: u64 = chosen
        .iter()
        .filter_map(|n| std::fs::metadata(folder.join(n)).ok())
        .map(|m| m.len())
        .sum();
    progress.set_length(total);
    for name in chosen {
        let path = folder.join(name);
        progress.set_message(name.clone());
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        progress.inc(bytes.len() as u64);
        files.insert(name.as_str(), bytes);
    }
    Ok(())
}

pub(crate) fn bar(hidden: bool, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Stage timings in milliseconds.
#[derive(Default, Debug, Clone)]
pub(crate) struct Timings {
    pub read: f64,
    pub load: f64,
    text: f64,
    denoise: f64,
    decode: f64,
    /// Per stage, time by layer kind (`bench --profile` only).
    profile: Vec<(&'static str, BTreeMap<&'static str, profile::Entry>)>,
}

impl Timings {
    /// Files what the profiler recorded since the last stage under `stage`.
    fn end_stage(&mut self, stage: &'static str) {
        if profile::enabled() {
            self.profile.push((stage, profile::take()));
        }
    }
}

pub(crate) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Waits for a tensor's computation (reading one value back), so stage times are real on GPUs.
fn settle<const D: usize>(t: &Tensor<D>) -> Result<()> {
    let one = t.clone().flatten::<1>(0, D - 1).narrow(0, 0, 1);
    pollster::block_on(read_f32(one))?;
    Ok(())
}

/// Whether the models need gradients (ReNO), and how activations are kept for them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gradients {
    None,
    /// Every activation kept for the backward pass.
    Kept,
    /// burn's gradient checkpointing: memory-bound activations recomputed in the backward pass.
    Checkpointed,
}

/// Reads the snapshot and loads it onto the chosen device (its autodiff form when the models
/// need gradients).
pub(crate) fn load(
    args: &ModelArgs,
    hidden: bool,
    gradients: Gradients,
    t: &mut Timings,
) -> Result<(Pipeline, ComputeDevice)> {
    let started = Instant::now();
    let reading = bar(
        hidden,
        "{spinner} reading {msg} {bytes}/{total_bytes} [{bar:30}]",
    );
    let folder = args.folder()?;
    let mut files = read_snapshot(&folder, &reading)?;
    crate::shipped::verify(&folder, &files)?;
    if let Some(path) = &args.unet {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading --unet {}", path.display()))?;
        for name in DIFFUSERS_WEIGHTS {
            files.take(&format!("unet/{name}"));
        }
        // The loader tells GGUF from safetensors by its first bytes.
        files.insert("unet/diffusion_pytorch_model.safetensors", bytes);
    }
    let decoder_files = match &args.decoder {
        Some(dir) => {
            let mut files = ModelFiles::new(dir.display().to_string());
            read_groups(dir, &decoder_files(), &mut files, &reading)?;
            crate::shipped::verify(dir, &files)?;
            Some(files)
        }
        None => None,
    };
    reading.finish_and_clear();
    t.read = ms(started);
    let mut device = open_device(&args.device)?;
    device.device = match gradients {
        Gradients::None => device.device,
        Gradients::Kept => device.device.autodiff(),
        Gradients::Checkpointed => device.device.autodiff().gradient_checkpointing(),
    };
    let started = Instant::now();
    let building = bar(
        hidden,
        "{spinner} loading the pipeline onto {msg} ({elapsed})",
    );
    building.set_message(device.describe());
    let mut pipeline = match &args.unet {
        Some(path) => Pipeline::from_files(files, &device.device)
            .with_context(|| format!("loading the model with --unet {}", path.display()))?,
        None => Pipeline::from_files(files, &device.device)?,
    };
    pipeline.set_buffer_limit(device.max_buffer_bytes);
    if let Some(files) = decoder_files {
        pipeline.set_decoder(LoadedDecoder::from_files(files, None, &device.device)?);
    }
    building.finish_and_clear();
    t.load = ms(started);
    Ok((pipeline, device))
}

/// Encode, denoise, decode and read back, timing each stage.
fn run(
    pipeline: &Pipeline,
    request: &Request,
    hidden: bool,
    t: &mut Timings,
) -> Result<tastebud_core::pipeline::RgbImage> {
    let (_, _, noise) = pipeline.prepare(request)?;
    let started = Instant::now();
    let conditioning = pipeline.encode_prompt(&request.prompt)?;
    settle(&conditioning.context)?;
    t.text = ms(started);
    t.end_stage("text");
    if conditioning.truncated {
        eprintln!(
            "warning: the prompt is longer than the text encoder takes (77 tokens); the end was \
             cut, as diffusers does"
        );
    }
    let started = Instant::now();
    let steps = bar(hidden, "{spinner} denoising step {pos}/{len} ({elapsed})");
    steps.set_length(request.steps as u64);
    let latents = pipeline.denoise(
        &conditioning,
        &noise,
        request.steps,
        request.seed,
        &mut |done, _| steps.set_position(done as u64),
    )?;
    settle(&latents)?;
    steps.finish_and_clear();
    t.denoise = ms(started);
    t.end_stage("denoise");
    let started = Instant::now();
    let image = pollster::block_on(to_rgb8(pipeline.decode(latents)))?;
    t.decode = ms(started);
    t.end_stage("decode");
    Ok(image)
}

pub fn generate(args: &GenerateArgs) -> Result<()> {
    let (Some(prompt), Some(out)) = (&args.prompt, &args.out) else {
        return generate_batch(args);
    };
    if out.extension().and_then(|e| e.to_str()) != Some("png") {
        bail!("--out {}: must be a .png file", out.display());
    }
    let request = args.noise.request(prompt)?;
    let mut t = Timings::default();
    let (pipeline, device) = load(&args.model, args.json, Gradients::None, &mut t)?;
    let image = run(&pipeline, &request, args.json, &mut t)?;
    let source = args.noise.source();
    let mut meta = vec![
        ("prompt", prompt.clone()),
        ("model", args.model.describe()),
        ("steps", args.noise.steps.to_string()),
        ("noise", source.clone()),
        (
            "software",
            format!("tastebud {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    if let Some(d) = &args.model.decoder {
        meta.push(("decoder", d.display().to_string()));
    }
    if args.noise.noise.is_none() {
        meta.push(("seed", args.noise.seed.to_string()));
    }
    let png = image.to_png(&meta)?;
    crate::write_atomic(out, &png)?;
    if args.json {
        let out = json!({
            "out": out.display().to_string(),
            "width": image.width,
            "height": image.height,
            "steps": args.noise.steps,
            "noise": source,
            "device": device.describe(),
            "ms": {"read": t.read, "load": t.load, "text": t.text, "denoise": t.denoise, "decode": t.decode},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if args.verbose {
            eprintln!(
                "read {:.0} ms, load {:.0} ms, text {:.0} ms, denoise {:.0} ms, decode {:.0} ms",
                t.read, t.load, t.text, t.denoise, t.decode
            );
        }
        println!(
            "wrote {} ({}x{}, {} step(s), {source})",
            out.display(),
            image.width,
            image.height,
            args.noise.steps
        );
    }
    Ok(())
}

/// `generate --prompts FILE --out-dir DIR`: every (prompt, seed) of the file, the model loaded once.
fn generate_batch(args: &GenerateArgs) -> Result<()> {
    let settings = json!({
        "command": "generate",
        "model": args.model.describe(),
        "decoder": args.model.decoder.as_ref().map(|d| d.display().to_string()),
        "steps": args.noise.steps,
        "width": args.noise.width,
        "height": args.noise.height,
    });
    let batch = crate::batch::Batch::open(&args.prompt_file, settings)?;
    let mut t = Timings::default();
    let (pipeline, device) = load(&args.model, false, Gradients::None, &mut t)?;
    eprintln!(
        "generating {} images on {}",
        batch.jobs.len(),
        device.describe()
    );
    let stop = crate::catch_ctrl_c();
    batch.run(stop, |job| {
        let request = job.request(&args.noise);
        let mut t = Timings::default();
        let image = run(&pipeline, &request, true, &mut t)?;
        let png = image.to_png(&[
            ("prompt", job.prompt.clone()),
            ("model", args.model.describe()),
            ("steps", request.steps.to_string()),
            ("seed", job.seed.to_string()),
            (
                "software",
                format!("tastebud {}", env!("CARGO_PKG_VERSION")),
            ),
        ])?;
        let record = json!({
            "steps": request.steps,
            "width": image.width,
            "height": image.height,
            "ms": t.text + t.denoise + t.decode,
        });
        Ok(Some((png, record)))
    })?;
    Ok(())
}

/// Peak resident memory of this process in MiB (Linux), for benchmark reports.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let mut t = Timings::default();
    let (pipeline, device) = load(&args.model, true, Gradients::None, &mut t)?;
    let request = Request {
        prompt: args.prompt.clone(),
        noise: None,
        seed: 0,
        steps: args.steps,
        height: Some(args.height),
        width: Some(args.width),
    };
    for _ in 0..args.warmup {
        eprintln!("warm-up run on {}", device.describe());
        run(&pipeline, &request, true, &mut Timings::default())?;
    }
    let mut runs = vec![];
    profile::enable(args.profile);
    profile::take();
    for i in 0..args.runs {
        let mut r = Timings::default();
        run(&pipeline, &request, true, &mut r)?;
        eprintln!(
            "run {}: text {:.0} ms, denoise {:.0} ms, decode {:.0} ms",
            i + 1,
            r.text,
            r.denoise,
            r.decode
        );
        runs.push(r);
    }
    let median = |f: fn(&Timings) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = json!({
        "model": args.model.describe(),
        "device": device.describe(),
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "runs": args.runs,
        "warmup_runs": args.warmup,
        "read_ms": t.read,
        "load_ms": t.load,
        "text_ms": median(|r| r.text),
        "denoise_ms": median(|r| r.denoise),
        "decode_ms": median(|r| r.decode),
        "total_ms": median(|r| r.text + r.denoise + r.decode),
        "peak_rss_mib": peak_rss_mib(),
    });
    profile::enable(false);
    let mut out = out;
    if args.profile {
        out["profile"] = profile_report(&runs);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Mean milliseconds and calls per run by stage and layer kind, with each stage's time outside
/// every profiled layer as `unprofiled`; also printed as a table on stderr.
fn profile_report(runs: &[Timings]) -> serde_json::Value {
    let n = runs.len().max(1) as f64;
    let mut report = serde_json::Map::new();
    for stage in ["text", "denoise", "decode"] {
        let mut kinds: BTreeMap<&str, profile::Entry> = BTreeMap::new();
        for (_, table) in runs
            .iter()
            .flat_map(|r| &r.profile)
            .filter(|(s, _)| *s == stage)
        {
            for (kind, e) in table {
                let sum = kinds.entry(kind).or_default();
                sum.calls += e.calls;
                sum.ms += e.ms;
            }
        }
        let stage_ms = runs
            .iter()
            .map(|r| match stage {
                "text" => r.text,
                "denoise" => r.denoise,
                _ => r.decode,
            })
            .sum::<f64>()
            / n;
        let mut rows: Vec<(&str, f64, f64)> = kinds
            .iter()
            .map(|(k, e)| (*k, e.ms / n, e.calls as f64 / n))
            .collect();
        let profiled: f64 = rows.iter().map(|r| r.1).sum();
        rows.push(("unprofiled", (stage_ms - profiled).max(0.0), 0.0));
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!("{stage}: {stage_ms:.0} ms");
        let mut table = serde_json::Map::new();
        for (kind, ms, calls) in rows {
            let share = if stage_ms > 0.0 { ms / stage_ms } else { 0.0 };
            eprintln!(
                "  {kind:<18} {ms:>10.1} ms {:>5.1}%  {calls:>6.0} calls",
                share * 100.0
            );
            table.insert(
                kind.into(),
                json!({ "ms": ms, "calls": calls, "share": share }),
            );
        }
        report.insert(stage.into(), table.into());
    }
    report.into()
}
