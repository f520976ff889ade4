//! `tastebud score`: several rewards, weighted, on a batch of image files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tastebud_core::ModelFiles;
use tastebud_core::burn::tensor::Device;
use tastebud_core::preprocess::{PreprocessChoice, decode_image};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};

#[derive(Args)]
pub struct ScoreArgs {
    /// A reward: NAME=PATH[,PATH...][:WEIGHT]. NAME is clip, pickscore, hps, aesthetic,
    /// imagereward or dino;
    /// PATH a model folder or a file (a weight file's folder supplies config and tokenizer
    /// files); several paths are merged (aesthetic=head.pth,clip-vit-large-patch14;
    /// dino=dinov2-small,ref1.png,ref2.png gives DINOv2 its reference images). WEIGHT defaults
    /// to ReNO's weight for the reward. Repeat the flag to combine rewards. Default: the shipped
    /// shapes-world CLIP (models/shapes/clip).
    #[arg(long = "reward", value_name = "NAME=PATH[:WEIGHT]")]
    rewards: Vec<String>,
    /// The text to score the images against.
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// Cut prompts longer than the text encoders take instead of refusing them.
    #[arg(long)]
    truncate: bool,
    /// How image files are resized and cropped: `auto` as each reward's published scoring
    /// code does (Pillow: OpenAI CLIP, open_clip/HPSv2, ImageReward, aesthetic, DINOv2 through
    /// torchvision transforms; PickScore through transformers 4's CLIPProcessor), `pil` the
    /// same, `torchvision` as transformers 5's default CLIPImageProcessor.
    #[arg(long, default_value = "auto", value_parser = parse_preprocess)]
    preprocess: PreprocessChoice,
    /// Print JSON (per-reward scores, weighted total, ReNO loss, times) instead of a table.
    #[arg(long)]
    json: bool,
    /// Score the images this many times and report the median time (for benchmarks).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// PNG or JPEG files, scored as one batch.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn parse_preprocess(s: &str) -> Result<PreprocessChoice, String> {
    s.parse().map_err(|e: tastebud_core::Error| e.to_string())
}

/// One parsed `--reward` flag.
pub(crate) struct RewardSpec {
    label: String,
    kind: RewardKind,
    paths: Vec<PathBuf>,
    weight: f32,
}

fn parse_spec(spec: &str) -> Result<RewardSpec> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("--reward {spec}: expected NAME=PATH[:WEIGHT]"))?;
    let kind = RewardKind::parse(name).with_context(|| format!("--reward {spec}"))?;
    let (paths, weight) = match rest.rsplit_once(':') {
        Some((paths, w)) => match w.parse::<f32>() {
            Ok(w) if w.is_finite() => (paths, w),
            _ => bail!("--reward {spec}: weight `{w}` is not a number"),
        },
        None => (rest, kind.default_weight()),
    };
    let paths: Vec<PathBuf> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        bail!("--reward {spec}: no path given");
    }
    Ok(RewardSpec {
        label: kind.name().to_string(),
        kind,
        paths,
        weight,
    })
}

/// The files a reward reads: from a folder, those its loader may want; for a file, the file
/// itself plus the folder's config and tokenizer files.
pub(crate) fn read_reward_files(spec: &RewardSpec) -> Result<ModelFiles> {
    let wanted = rewards::files_wanted(spec.kind);
    let mut files = ModelFiles::new(spec.paths[0].display().to_string());
    let add = |folder: &Path, name: &str, files: &mut ModelFiles| -> Result<()> {
        let path = folder.join(name);
        if path.is_file() && !files.contains(name) {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.insert(name, bytes);
        }
        Ok(())
    };
    for path in &spec.paths {
        if path.is_dir() {
            for name in &wanted {
                add(path, name, &mut files)?;
            }
        } else if path.is_file() {
            let folder = path.parent().unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            add(folder, &name, &mut files)?;
            for name in wanted
                .iter()
                .filter(|n| n.ends_with(".json") || n.ends_with(".txt"))
            {
                add(folder, name, &mut files)?;
            }
        } else {
            bail!("--reward {}: {} does not exist", spec.label, path.display());
        }
    }
    if let [folder] = spec.paths.as_slice()
        && folder.is_dir()
    {
        crate::shipped::verify(folder, &files)?;
    }
    Ok(files)
}

/// Parses `--reward` flags (none: the shipped CLIP); a kind given twice is labelled `name#2`, ...
pub(crate) fn parse_rewards(flags: &[String]) -> Result<Vec<RewardSpec>> {
    if flags.is_empty() {
        let clip = crate::shipped::model("clip")?;
        return Ok(vec![parse_spec(&format!("clip={}", clip.display()))?]);
    }
    let mut specs = flags
        .iter()
        .map(|s| parse_spec(s))
        .collect::<Result<Vec<_>>>()?;
    for i in 0..specs.len() {
        let same = specs[..i]
            .iter()
            .filter(|s| s.kind == specs[i].kind)
            .count();
        if same > 0 {
            specs[i].label = format!("{}#{}", specs[i].label, same + 1);
        }
    }
    Ok(specs)
}

/// Loads each reward's files (read by [`read_reward_files`]) onto `device` as one set.
pub(crate) fn load_rewards(
    specs: &[RewardSpec],
    files: Vec<ModelFiles>,
    device: &Device,
) -> Result<RewardSet> {
    let mut terms = Vec::new();
    for (spec, files) in specs.iter().zip(files) {
        let reward = rewards::load(spec.kind, files, device)
            .with_context(|| format!("loading the {} reward", spec.label))?;
        terms.push(RewardTerm {
            label: spec.label.clone(),
            reward,
            weight: spec.weight,
        });
    }
    Ok(RewardSet::new(terms)?)
}

pub fn score(args: &ScoreArgs) -> Result<()> {
    // Check the cheap things (flags, images) before starting a device or loading weights.
    let specs = parse_rewards(&args.rewards)?;
    let decoded = args
        .images
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
            Ok(decode_image(&path.display().to_string(), &bytes)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let files = specs
        .iter()
        .map(read_reward_files)
        .collect::<Result<Vec<_>>>()?;
    let device = crate::open_device(&args.device)?;
    let started = Instant::now();
    let mut set = load_rewards(&specs, files, &device.device)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::new();
    let mut scores = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        set.set_prompt(&args.prompt, args.truncate)?;
        let values = set.evaluate_files(&decoded, args.preprocess, &device.device)?;
        scores = pollster::block_on(set.read(values))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let score_ms = times[times.len() / 2];
    eprintln!(
        "load {load_ms:.0} ms, score {score_ms:.0} ms (median of {})",
        times.len()
    );
    let labels: Vec<&str> = set.terms().iter().map(|t| t.label.as_str()).collect();
    if args.json {
        let rewards: Vec<_> = specs
            .iter()
            .map(|s| {
                json!({"label": s.label, "kind": s.kind, "weight": s.weight,
                       "loss_constant": s.kind.loss_constant(),
                       "paths": s.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()})
            })
            .collect();
        let rows: Vec<_> = args
            .images
            .iter()
            .zip(&scores)
            .map(|(path, s)| {
                let per: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .zip(&s.rewards)
                    .map(|(l, v)| (l.to_string(), json!(v)))
                    .collect();
                json!({"image": path.display().to_string(), "rewards": per,
                       "weighted_total": s.weighted_total, "loss": s.loss})
            })
            .collect();
        let out = json!({
            "prompt": args.prompt,
            "device": device.describe(),
            "rewards": rewards,
            "scores": rows,
            "load_ms": load_ms,
            "score_ms": score_ms,
            "runs": times.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for label in &labels {
            print!("{label:>12}  ");
        }
        println!("{:>12}  {:>12}  image", "total", "loss");
        for (path, s) in args.images.iter().zip(&scores) {
            for v in &s.rewards {
                print!("{v:>12.6}  ");
            }
            println!(
                "{:>12.6}  {:>12.6}  {}",
                s.weighted_total,
                s.loss,
                path.display()
            );
        }
    }
    Ok(())
}
