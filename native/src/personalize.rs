//! `tastebud personalize`: record a person's pairwise choices, fit their reward head, ask the
//! most useful next question, rank images by their taste, and benchmark the heads on simulated
//! people. Everything stays in local files.
//!
//! Images may always be replaced by their embeddings: `.npy` (`[d]` or `[n, d]`) or `.json`
//! (an array of vectors) files stand in for image files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tastebud_core::burn::tensor::Device;
use tastebud_core::models::clip::Clip;
use tastebud_core::noise::Noise;
use tastebud_core::personal::active::choose_next;
use tastebud_core::personal::fit::{
    FitConfig, HeadSettings, Pairs, PretrainConfig, fit_head, pretrain,
};
use tastebud_core::personal::prior::PriorMethod;
use tastebud_core::personal::store::{Candidate, Choice, Limits, Preference, PreferenceStore};
use tastebud_core::personal::{HEAD_CONFIG, HEAD_WEIGHTS, HeadKind, PersonalHead};
use tastebud_core::preprocess::decode_image;
use tastebud_core::rewards::clip_reward::load_clip;
use tastebud_core::rewards::personal::{embed_images, embed_prompt};
use tastebud_core::rewards::{self, RewardKind};
use tastebud_core::{ComputeDevice, ModelFiles};

use crate::DeviceArgs;
use crate::personalize_bench::{self, BenchArgs, BenchPriorArgs};
use crate::write_atomic;

#[derive(Subcommand)]
pub enum PersonalizeCommand {
    /// Add one answered pair to a preference file (created if missing).
    Record(RecordArgs),
    /// Merge other preference files into one (validated first; nothing changes on an error).
    Import {
        /// The file to merge into (created if missing).
        #[arg(long)]
        prefs: PathBuf,
        /// Files to merge in.
        #[arg(required = true)]
        others: Vec<PathBuf>,
    },
    /// Learn a population base (PAL prototypes or VPL's encoder) from many people's files.
    Pretrain(PretrainArgs),
    /// Fit a person's head from their preference file.
    Fit(FitArgs),
    /// Which pair of candidates to ask about next (where the head is least sure).
    Next(NextArgs),
    /// Rank images (or embeddings) by a fitted head.
    Rank(RankArgs),
    /// Heads on simulated people: held-out accuracy after 5/10/20/25/50 answers, random vs active.
    Bench(BenchArgs),
    /// The population prior against an oracle that knows the population's hidden tastes.
    BenchPrior(BenchPriorArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ChoiceArg {
    A,
    B,
    Tie,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HeadArg {
    Linear,
    Mlp,
    Pal,
    Vpl,
}

impl HeadArg {
    fn kind(self) -> HeadKind {
        match self {
            Self::Linear => HeadKind::Linear,
            Self::Mlp => HeadKind::Mlp,
            Self::Pal => HeadKind::Pal,
            Self::Vpl => HeadKind::Vpl,
        }
    }
}

/// How a linear prior is made (`--prior`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PriorArg {
    /// One-by-one or joint, and the joint fit's rank, chosen by how well each predicts a fifth
    /// of the people held out from a few of their answers.
    Auto,
    /// Each person's head fitted alone; their mean and principal directions.
    Heads,
    /// The one-by-one prior's mean and directions refitted on everyone's answers at once.
    Joint,
}

impl PriorArg {
    fn method(self) -> PriorMethod {
        match self {
            Self::Auto => PriorMethod::Auto,
            Self::Heads => PriorMethod::Heads,
            Self::Joint => PriorMethod::Joint,
        }
    }
}

/// A CLIP for turning images (and prompts) into embeddings.
#[derive(Args)]
pub struct ClipArgs {
    /// A CLIP folder (transformers or OpenCLIP layout) to embed images and prompts with.
    #[arg(long)]
    clip: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct RecordArgs {
    /// The preference file (created if missing).
    #[arg(long)]
    prefs: PathBuf,
    /// The prompt the two images were made for.
    #[arg(long)]
    prompt: String,
    /// The first image shown (or its embedding file).
    #[arg(long)]
    a: PathBuf,
    /// The second image shown.
    #[arg(long)]
    b: PathBuf,
    #[arg(long, value_enum)]
    choice: ChoiceArg,
    /// What made the images (e.g. stabilityai/sd-turbo).
    #[arg(long)]
    model: Option<String>,
    /// Whose answer it is (population files for pretraining hold several people).
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    clip: ClipArgs,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Preference files; records without a `user` count as the file's one person.
    #[arg(long, required = true, num_args = 1..)]
    prefs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "pal")]
    head: HeadArg,
    /// PAL's prototypes (K).
    #[arg(long, default_value_t = 4)]
    prototypes: usize,
    /// VPL's latent size.
    #[arg(long, default_value_t = 8)]
    latent: usize,
    /// A linear prior's rank: how many directions of people's tastes it keeps (with `--prior
    /// auto`, the most it tries).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// How a linear prior is made.
    #[arg(long, value_enum, default_value = "auto")]
    prior: PriorArg,
    /// Adam steps over all the pairs (PAL, VPL; a linear prior fits each person's head with
    /// `fit`'s defaults).
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// The base folder to write (head.json + head.safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct FitArgs {
    /// The person's preference file (records need embeddings: record them with --clip).
    #[arg(long)]
    prefs: PathBuf,
    /// linear (from scratch, or on a --base from `pretrain --head linear`: the population as
    /// its prior), mlp (from scratch), pal or vpl (on a --base).
    #[arg(long, value_enum)]
    head: HeadArg,
    /// The population base PAL and VPL heads start from, or a linear head's prior
    /// (`personalize pretrain`).
    #[arg(long)]
    base: Option<PathBuf>,
    /// The head folder to write (head.json + head.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Read the prompt too (records need prompt embeddings: record them with --clip).
    #[arg(long)]
    context: bool,
    /// Adam steps (full batch).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// L2 penalty on the head's weights.
    #[arg(long, default_value_t = 1e-3)]
    l2: f32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NextArgs {
    /// The person's preference file (their answers so far).
    #[arg(long)]
    prefs: PathBuf,
    /// The person's linear head (its Laplace posterior says how unsure it is), or a VPL head
    /// or base (its latent posterior for their answers does).
    #[arg(long)]
    head: PathBuf,
    /// The prompt, for heads that read it (needs --clip).
    #[arg(long)]
    prompt: Option<String>,
    /// The L2 penalty of the linear head's posterior [default: the one it was fitted with].
    #[arg(long)]
    l2: Option<f32>,
    /// The images (or embedding files) to choose the pair from.
    #[arg(long, required = true, num_args = 1..)]
    candidates: Vec<PathBuf>,
    /// Samples of the head's uncertainty for the information estimate.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    clip: ClipArgs,
}

#[derive(Args)]
pub struct RankArgs {
    /// The head folder (head.json + head.safetensors).
    #[arg(long)]
    head: PathBuf,
    /// The prompt, for heads that read it (needs --clip).
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    clip: ClipArgs,
    /// Images or embedding files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(command: &PersonalizeCommand) -> Result<()> {
    match command {
        PersonalizeCommand::Record(args) => record(args),
        PersonalizeCommand::Import { prefs, others } => import(prefs, others),
        PersonalizeCommand::Pretrain(args) => pretrain_base(args),
        PersonalizeCommand::Fit(args) => fit(args),
        PersonalizeCommand::Next(args) => next(args),
        PersonalizeCommand::Rank(args) => rank(args),
        PersonalizeCommand::Bench(args) => personalize_bench::bench(args),
        PersonalizeCommand::BenchPrior(args) => personalize_bench::bench_prior(args),
    }
}

/// Heads are small: they train and score on the CPU backend.
pub(crate) fn head_device() -> Device {
    ComputeDevice::cpu().device.autodiff()
}

fn read_prefs(path: &Path) -> Result<PreferenceStore> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(PreferenceStore::from_json(
        &path.display().to_string(),
        &bytes,
        &Limits::default(),
    )?)
}

fn load_clip_args(args: &ClipArgs) -> Result<Option<Clip>> {
    let Some(dir) = &args.clip else {
        return Ok(None);
    };
    let mut files = ModelFiles::new(dir.display().to_string());
    for name in rewards::files_wanted(RewardKind::Clip) {
        let path = dir.join(name);
        if path.is_file() {
            files.insert(
                name,
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            );
        }
    }
    let device = crate::open_device(&args.device)?;
    Ok(Some(load_clip(files, None, &device.device)?))
}

fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Embedding vectors from a `.npy` (`[d]` or `[n, d]`) or `.json` (array of vectors) file.
fn read_embedding_file(path: &Path) -> Result<Vec<Vec<f32>>> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
    let rows: Vec<Vec<f32>> = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let t = Noise::from_bytes(&name, &bytes)?;
            match t.shape.as_slice() {
                [d] => vec![t.values[..*d].to_vec()],
                [_, d] if *d > 0 => t.values.chunks(*d).map(<[f32]>::to_vec).collect(),
                other => bail!("{name}: shape {other:?}; expected [d] or [n, d]"),
            }
        }
        Some("json") => serde_json::from_slice(&bytes)
            .with_context(|| format!("{name}: expected a JSON array of embedding vectors"))?,
        _ => bail!("{name}: not an image (.png, .jpg) or embedding file (.npy, .json)"),
    };
    if let Some((i, _)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
    {
        bail!("{name}: vector {i} has a value that is not finite");
    }
    Ok(rows)
}

/// Candidates as (label, embedding): images embedded with the CLIP, embedding files as they are.
fn read_candidates(paths: &[PathBuf], clip: Option<&Clip>) -> Result<Vec<(String, Vec<f32>)>> {
    let mut out = vec![];
    for path in paths {
        let name = path.display().to_string();
        if is_image(path) {
            let clip =
                clip.with_context(|| format!("{name}: an image needs --clip to be embedded"))?;
            let bytes = std::fs::read(path).with_context(|| format!("reading {name}"))?;
            let image = decode_image(&name, &bytes)?;
            let e = pollster::block_on(embed_images(clip, &[image]))?;
            out.extend(e.into_iter().map(|e| (name.clone(), e)));
        } else {
            let rows = read_embedding_file(path)?;
            let many = rows.len() > 1;
            out.extend(rows.into_iter().enumerate().map(|(i, e)| {
                (
                    if many {
                        format!("{name}#{i}")
                    } else {
                        name.clone()
                    },
                    e,
                )
            }));
        }
    }
    Ok(out)
}

fn record(args: &RecordArgs) -> Result<()> {
    let mut store = if args.prefs.exists() {
        read_prefs(&args.prefs)?
    } else {
        PreferenceStore::new(args.clip.clip.as_ref().map(|c| c.display().to_string()))
    };
    let clip = load_clip_args(&args.clip)?;
    let candidate = |path: &PathBuf| -> Result<Candidate> {
        let image = is_image(path).then(|| path.display().to_string());
        let embedding = match (&clip, image.is_some()) {
            (None, true) => None,
            _ => read_candidates(std::slice::from_ref(path), clip.as_ref())?
                .pop()
                .map(|(_, e)| e),
        };
        Ok(Candidate { image, embedding })
    };
    let (a, b) = (candidate(&args.a)?, candidate(&args.b)?);
    let prompt_embedding = match &clip {
        Some(c) => Some(pollster::block_on(embed_prompt(c, &args.prompt, true))?),
        None => None,
    };
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    store.push(Preference {
        prompt: args.prompt.clone(),
        a,
        b,
        choice: match args.choice {
            ChoiceArg::A => Choice::A,
            ChoiceArg::B => Choice::B,
            ChoiceArg::Tie => Choice::Tie,
        },
        model: args.model.clone(),
        timestamp,
        user: args.user.clone(),
        prompt_embedding,
    })?;
    write_atomic(&args.prefs, &store.to_json()?)?;
    println!(
        "{} records in {}",
        store.records.len(),
        args.prefs.display()
    );
    Ok(())
}

fn import(prefs: &Path, others: &[PathBuf]) -> Result<()> {
    let mut store = if prefs.exists() {
        read_prefs(prefs)?
    } else {
        PreferenceStore::default()
    };
    let mut added = 0;
    for other in others {
        let incoming = read_prefs(other)?;
        added += store
            .import(incoming)
            .with_context(|| format!("importing {}", other.display()))?;
    }
    write_atomic(prefs, &store.to_json()?)?;
    println!(
        "added {added} records; {} in {}",
        store.records.len(),
        prefs.display()
    );
    Ok(())
}

fn save_head(head: &PersonalHead, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (json, weights) = head.to_files()?;
    write_atomic(&dir.join(HEAD_WEIGHTS), &weights)?;
    write_atomic(&dir.join(HEAD_CONFIG), &json)
}

fn load_head(dir: &Path, device: &Device) -> Result<PersonalHead> {
    let mut files = ModelFiles::new(dir.display().to_string());
    for name in [HEAD_CONFIG, HEAD_WEIGHTS] {
        let path = dir.join(name);
        if path.is_file() {
            files.insert(
                name,
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            );
        }
    }
    Ok(PersonalHead::from_files(&mut files, device)?)
}

fn pretrain_base(args: &PretrainArgs) -> Result<()> {
    let mut all = PreferenceStore::default();
    for path in &args.prefs {
        let mut store = read_prefs(path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        for r in &mut store.records {
            r.user.get_or_insert_with(|| stem.clone());
        }
        all.import(store)
            .with_context(|| format!("merging {}", path.display()))?;
    }
    let pairs = Pairs::from_store(&all, false)?;
    let config = PretrainConfig {
        steps: args.steps,
        prototypes: args.prototypes,
        latent: args.latent,
        rank: args.rank,
        prior: args.prior.method(),
        ..PretrainConfig::default()
    };
    let started = Instant::now();
    let mut head = pollster::block_on(pretrain(args.head.kind(), &pairs, &config, &head_device()))?;
    head.config.embedding_model = all.embedding_model.clone();
    save_head(&head, &args.out)?;
    let rank = match head.config.rank {
        0 => String::new(),
        r => format!(" (prior of rank {r})"),
    };
    println!(
        "{} base{rank} from {} pairs of {} people in {:.1} s; wrote {}",
        head.config.kind.name(),
        pairs.len(),
        pairs.user_names.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn fit(args: &FitArgs) -> Result<()> {
    let store = read_prefs(&args.prefs)?;
    let summary = store.summary();
    let pairs = Pairs::from_store(&store, args.context)?;
    let device = head_device();
    let base = args
        .base
        .as_ref()
        .map(|b| load_head(b, &device))
        .transpose()?;
    let settings = HeadSettings {
        fit: FitConfig {
            steps: args.steps,
            lr: args.lr,
            l2: args.l2,
            seed: 0,
        },
        ..HeadSettings::new(args.head.kind())
    };
    let started = Instant::now();
    let mut head = pollster::block_on(fit_head(&settings, base, &pairs, &device))?;
    let fit_ms = started.elapsed().as_secs_f64() * 1e3;
    head.config.embedding_model = head
        .config
        .embedding_model
        .clone()
        .or(store.embedding_model.clone());
    save_head(&head, &args.out)?;
    if args.json {
        let out = json!({"head": head.config, "summary": summary, "fit_ms": fit_ms,
                         "out": args.out.display().to_string()});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if summary.contradictions > 0 {
            eprintln!(
                "note: {} pair(s) were answered both ways; the head weighs them as uncertain",
                summary.contradictions
            );
        }
        println!(
            "{} head from {} pairs ({} ties) in {fit_ms:.0} ms; wrote {}",
            head.config.kind.name(),
            pairs.len(),
            summary.ties,
            args.out.display()
        );
    }
    Ok(())
}

fn next(args: &NextArgs) -> Result<()> {
    let store = read_prefs(&args.prefs)?;
    let clip = load_clip_args(&args.clip)?;
    let candidates = read_candidates(&args.candidates, clip.as_ref())?;
    if candidates.len() < 2 {
        bail!(
            "--candidates: {} given; a pair needs at least two",
            candidates.len()
        );
    }
    let device = head_device();
    let head = load_head(&args.head, &device)?;
    let context = prompt_context(&head, args.prompt.as_deref(), clip.as_ref())?;
    let pairs = Pairs::from_store(&store, head.config.context)?;
    // Pairs already answered, by image name.
    let index = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| candidates.iter().position(|(l, _)| l == n))
    };
    let asked: Vec<(usize, usize)> = store
        .records
        .iter()
        .filter_map(|r| Some((index(&r.a.image)?, index(&r.b.image)?)))
        .collect();
    let vectors: Vec<Vec<f32>> = candidates.iter().map(|(_, e)| e.clone()).collect();
    let choice = pollster::block_on(choose_next(
        &head,
        &pairs,
        &vectors,
        context.as_deref(),
        &asked,
        args.l2,
        args.samples,
        0,
        &device,
    ))
    .with_context(|| format!("--head {}", args.head.display()))?
    .context("every pair of these candidates has been asked already")?;
    let (a, b) = (&candidates[choice.first].0, &candidates[choice.second].0);
    if args.json {
        let out = json!({"a": a, "b": b, "information": choice.information, "p_a": choice.p_first,
                         "answered": store.records.len()});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "ask: {a} vs {b} (expected information {:.3} nats; P({a} preferred) = {:.2})",
            choice.information, choice.p_first
        );
    }
    Ok(())
}

/// The prompt's embedding for heads that read it (needs the prompt and a CLIP).
fn prompt_context(
    head: &PersonalHead,
    prompt: Option<&str>,
    clip: Option<&Clip>,
) -> Result<Option<Vec<f32>>> {
    match (prompt, clip, head.config.context) {
        (Some(p), Some(c), true) => Ok(Some(pollster::block_on(embed_prompt(c, p, true))?)),
        (_, _, true) => bail!("this head reads the prompt: give --prompt and --clip"),
        _ => Ok(None),
    }
}

fn rank(args: &RankArgs) -> Result<()> {
    let clip = load_clip_args(&args.clip)?;
    let candidates = read_candidates(&args.images, clip.as_ref())?;
    let device = head_device();
    let head = load_head(&args.head, &device)?;
    let context = prompt_context(&head, args.prompt.as_deref(), clip.as_ref())?;
    let vectors: Vec<Vec<f32>> = candidates.iter().map(|(_, e)| e.clone()).collect();
    let scores = pollster::block_on(head.score_vectors(&vectors, context.as_deref(), &device))?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    if args.json {
        let rows: Vec<_> = order
            .iter()
            .map(|&i| json!({"image": candidates[i].0, "score": scores[i]}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ranking": rows}))?
        );
    } else {
        for (rank, &i) in order.iter().enumerate() {
            println!("{:>3}  {:>10.4}  {}", rank + 1, scores[i], candidates[i].0);
        }
    }
    Ok(())
}
