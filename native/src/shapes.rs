//! `tastebud judge` and `tastebud shapes ...`: the shapes world from the command line (its
//! judge, renders of its prompts, training sets and the evaluation suite).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tastebud_core::noise::Rng;
use tastebud_core::preprocess::decode_image;
use tastebud_core::shapes::judge::{find_objects, judge, off_world_share};
use tastebud_core::shapes::prompt::{Wording, eval_suite, hard_negatives, parse, sample_request};
use tastebud_core::shapes::render::{render, sample_scene};
use tastebud_core::shapes::{TASKS, World};

use crate::write_atomic;

#[derive(Args)]
pub struct JudgeArgs {
    /// What the pictures should show, in the shapes world's words ("a red circle left of a
    /// blue square", "three triangles", ...).
    #[arg(long)]
    prompt: String,
    /// PNG files of the shapes world (64x64).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print JSON (verdicts, reasons, the objects found).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ShapesCommand {
    /// Render pictures of a prompt: the world's ground truth.
    Render {
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a training set: images.npy ([N, S, S, 3] uint8) and captions.jsonl (caption, task,
    /// GenEval metadata, hard negatives in the same wording), all six tasks mixed.
    Dataset {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A folder (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Judge many pictures listed in a JSONL file (`{"prompt": TEXT, "image": PATH}` or GenEval
    /// metadata with an `image`): accuracy per task and overall (the mean of the tasks').
    JudgeSet {
        #[arg(long)]
        manifest: PathBuf,
        /// Print every verdict too.
        #[arg(long)]
        verbose: bool,
    },
    /// The benchmark: generate every prompt of the evaluation suite with SEEDS seeds and judge
    /// the pictures; accuracy per task and overall (GenEval's mean of the six), time per image.
    Eval(EvalArgs),
    /// Write the evaluation suite: GenEval's metadata JSONL, up to PER_TASK distinct prompts per task.
    EvalSet {
        #[arg(long, default_value_t = 100)]
        per_task: usize,
        #[arg(long, default_value_t = 43)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: crate::generate::ModelArgs,
    /// The suite (GenEval metadata JSONL). Default: the committed models/shapes/eval.jsonl.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Seeds per prompt (0..SEEDS).
    #[arg(long, default_value_t = 4)]
    seeds: u64,
    /// Sampling steps (1 to 4).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Keep every picture here (`LINE-SEED.png`) with a manifest.jsonl for `shapes judge-set`.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn judge_images(args: &JudgeArgs) -> Result<()> {
    let world = World::builtin()?;
    let request = parse(&world, &args.prompt)?;
    let metadata = request.metadata(&world, args.prompt.clone());
    let mut verdicts = vec![];
    for path in &args.images {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
        let image = decode_image(&name, &bytes)?;
        let rgb = image.to_rgb();
        let found = find_objects(&world, &name, &rgb, image.width(), image.height())?;
        verdicts.push((name, judge(&world, &metadata, found)));
    }
    if args.json {
        let rows: Vec<_> = verdicts
            .iter()
            .map(|(name, v)| json!({"image": name, "holds": v.holds, "reasons": v.reasons, "found": v.found}))
            .collect();
        let out = json!({"prompt": args.prompt, "metadata": metadata, "verdicts": rows});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (name, v) in &verdicts {
        let objects: Vec<String> = v
            .found
            .iter()
            .map(|f| format!("{} {} {}", f.size, f.color, f.shape))
            .collect();
        let status = if v.holds { "holds" } else { "fails" };
        println!("{name}: {status} ({} task)", metadata.tag);
        for reason in &v.reasons {
            println!("  {reason}");
        }
        println!(
            "  found: {}",
            if objects.is_empty() {
                "nothing".into()
            } else {
                objects.join(", ")
            }
        );
    }
    Ok(())
}

pub fn run(command: &ShapesCommand) -> Result<()> {
    let world = World::builtin()?;
    match command {
        ShapesCommand::Render { prompt, seed, out } => {
            let request = parse(&world, prompt)?;
            let scene = sample_scene(&world, &request, &mut Rng::new(*seed))?;
            let n = world.image_size as u32;
            let image =
                image::RgbImage::from_raw(n, n, render(&world, &scene)).context("render size")?;
            let mut png = vec![];
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .context("encoding the PNG")?;
            write_atomic(out, &png)?;
            eprintln!("wrote {} ({prompt:?}, seed {seed})", out.display());
        }
        ShapesCommand::Dataset { count, seed, out } => dataset(&world, *count, *seed, out)?,
        ShapesCommand::JudgeSet { manifest, verbose } => judge_set(&world, manifest, *verbose)?,
        ShapesCommand::Eval(args) => eval(&world, args)?,
        ShapesCommand::EvalSet {
            per_task,
            seed,
            out,
        } => {
            let suite = eval_suite(&world, *per_task, *seed)?;
            let mut text = String::new();
            for p in &suite {
                text.push_str(&serde_json::to_string(p)?);
                text.push('\n');
            }
            write_atomic(out, text.as_bytes())?;
            for task in TASKS {
                let n = suite.iter().filter(|p| p.tag == task).count();
                eprintln!("{task}: {n} prompts");
            }
        }
    }
    Ok(())
}

/// One judged picture: its task, whether the prompt holds, and its share of off-world pixels.
pub struct Judged {
    pub task: String,
    pub holds: bool,
    pub off_world: f64,
}

/// Per-task accuracy of verdicts, and GenEval's overall score (the mean of the tasks'), with the
/// mean share of off-world pixels (`off_world_share`: how far pictures left the world).
pub fn scores(judged: &[Judged]) -> serde_json::Value {
    let mut per_task = serde_json::Map::new();
    let mut accuracies = vec![];
    let mean = |v: &[&Judged], f: fn(&Judged) -> f64| {
        v.iter().map(|j| f(j)).sum::<f64>() / v.len().max(1) as f64
    };
    for task in TASKS {
        let of: Vec<&Judged> = judged.iter().filter(|j| j.task == task).collect();
        if of.is_empty() {
            continue;
        }
        let acc = mean(&of, |j| f64::from(u8::from(j.holds)));
        accuracies.push(acc);
        per_task.insert(
            task.to_string(),
            json!({"accuracy": acc, "images": of.len(), "off_world": mean(&of, |j| j.off_world)}),
        );
    }
    let overall = accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64;
    let all: Vec<&Judged> = judged.iter().collect();
    json!({"tasks": per_task, "overall": overall, "images": judged.len(),
           "off_world": mean(&all, |j| j.off_world)})
}

fn judge_set(world: &World, manifest: &Path, verbose: bool) -> Result<()> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let folder = manifest.parent().unwrap_or(Path::new("."));
    let mut verdicts = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", manifest.display(), i + 1);
        let row: serde_json::Value = serde_json::from_str(line).with_context(at)?;
        let prompt = row["prompt"]
            .as_str()
            .with_context(|| format!("{}: no prompt", at()))?;
        let image = row["image"]
            .as_str()
            .with_context(|| format!("{}: no image", at()))?;
        let metadata = match serde_json::from_value(row.clone()) {
            Ok(m) => m,
            Err(_) => parse(world, prompt)?.metadata(world, prompt.to_string()),
        };
        let path = folder.join(image);
        let name = path.display().to_string();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {name}"))?;
        let decoded = decode_image(&name, &bytes)?;
        let (rgb, w, h) = (decoded.to_rgb(), decoded.width(), decoded.height());
        let found = find_objects(world, &name, &rgb, w, h)?;
        let off_world = off_world_share(world, &name, &rgb, w, h)?;
        let verdict = judge(world, &metadata, found);
        if verbose {
            eprintln!(
                "{name}: {prompt:?} {} {:?}",
                if verdict.holds { "holds" } else { "fails" },
                verdict.reasons
            );
        }
        verdicts.push(Judged {
            task: metadata.tag.clone(),
            holds: verdict.holds,
            off_world,
        });
    }
    println!("{}", serde_json::to_string_pretty(&scores(&verdicts))?);
    Ok(())
}

fn eval(world: &World, args: &EvalArgs) -> Result<()> {
    use tastebud_core::pipeline::Request;
    use tastebud_core::shapes::prompt::Prompt;
    let suite_path = args
        .prompts
        .clone()
        .unwrap_or_else(|| crate::shipped::shapes_dir().join("eval.jsonl"));
    let text = std::fs::read_to_string(&suite_path)
        .with_context(|| format!("reading {}", suite_path.display()))?;
    let suite: Vec<Prompt> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}", suite_path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let mut t = crate::generate::Timings::default();
    let (pipeline, device) =
        crate::generate::load(&args.model, true, crate::generate::Gradients::None, &mut t)?;
    let total = suite.len() as u64 * args.seeds;
    let progress = crate::generate::bar(false, "{bar:30} {pos}/{len} pictures ({eta} left)");
    progress.set_length(total);
    let started = std::time::Instant::now();
    let mut verdicts = vec![];
    let mut manifest = String::new();
    for (line, prompt) in suite.iter().enumerate() {
        for seed in 0..args.seeds {
            let request = Request {
                prompt: prompt.prompt.clone(),
                noise: None,
                seed,
                steps: args.steps,
                height: None,
                width: None,
            };
            let image = pollster::block_on(pipeline.generate(&request))?;
            let name = format!("{line:04}-{seed}.png");
            let (w, h) = (image.width, image.height);
            let found = find_objects(world, &name, &image.pixels, w, h)?;
            let off_world = off_world_share(world, &name, &image.pixels, w, h)?;
            let verdict = judge(world, prompt, found);
            verdicts.push(Judged {
                task: prompt.tag.clone(),
                holds: verdict.holds,
                off_world,
            });
            if let Some(out) = &args.out {
                let png = image.to_png(&[
                    ("prompt", prompt.prompt.clone()),
                    ("seed", seed.to_string()),
                ])?;
                write_atomic(&out.join(&name), &png)?;
                let mut row = serde_json::to_value(prompt)?;
                row["image"] = json!(name);
                row["holds"] = json!(verdict.holds);
                row["reasons"] = json!(verdict.reasons);
                manifest.push_str(&format!("{row}\n"));
            }
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let per_image_ms = started.elapsed().as_secs_f64() * 1e3 / total.max(1) as f64;
    if let Some(out) = &args.out {
        write_atomic(&out.join("manifest.jsonl"), manifest.as_bytes())?;
    }
    let mut report = scores(&verdicts);
    report["model"] = json!(args.model.describe());
    report["steps"] = json!(args.steps);
    report["seeds"] = json!(args.seeds);
    report["prompts"] = json!(suite.len());
    report["device"] = json!(device.describe());
    report["ms_per_image"] = json!(per_image_ms);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A `.npy` header for a C-order uint8 array of `shape`.
fn npy_u8_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // NumPy writes a one-element tuple with a trailing comma.
    let comma = if dims.len() == 1 { "," } else { "" };
    let mut dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}{comma}), }}",
        dims.join(", ")
    );
    // Magic (6) + version (2) + length (2) + dict + newline, padded to 64 bytes.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

fn dataset(world: &World, count: usize, seed: u64, out: &Path) -> Result<()> {
    if count == 0 || count > 10_000_000 {
        bail!("--count {count}: 1 to 10000000");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let n = world.image_size;
    let mut rng = Rng::new(seed);
    let images_path = out.join("images.npy");
    let captions_path = out.join("captions.jsonl");
    let tmp = |p: &Path| p.with_extension("tmp");
    let mut images = std::io::BufWriter::new(
        std::fs::File::create(tmp(&images_path))
            .with_context(|| format!("creating {}", images_path.display()))?,
    );
    let mut captions = std::io::BufWriter::new(
        std::fs::File::create(tmp(&captions_path))
            .with_context(|| format!("creating {}", captions_path.display()))?,
    );
    images.write_all(&npy_u8_header(&[count, n, n, 3]))?;
    for i in 0..count {
        let task = TASKS[rng.below(TASKS.len())];
        let request = sample_request(world, task, rng.uniform() < 0.5, &mut rng)?;
        let wording = Wording::random(world, &mut rng);
        let caption = request.text(world, &wording);
        let negatives: Vec<String> = hard_negatives(world, &request, &mut rng)
            .iter()
            .map(|r| r.text(world, &wording))
            .collect();
        let scene = sample_scene(world, &request, &mut rng)?;
        images.write_all(&render(world, &scene))?;
        let line = json!({
            "caption": caption,
            "tag": request.tag(),
            "metadata": request.metadata(world, caption.clone()),
            "negatives": negatives,
        });
        writeln!(captions, "{line}")?;
        if (i + 1) % 10_000 == 0 {
            eprintln!("{} / {count}", i + 1);
        }
    }
    for (w, path) in [(images, &images_path), (captions, &captions_path)] {
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::rename(tmp(path), path)
            .with_context(|| format!("replacing {}", path.display()))?;
    }
    eprintln!("wrote {count} pictures to {}", out.display());
    Ok(())
}
