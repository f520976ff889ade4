//! `tastebud quantize`: a model folder (a diffusers snapshot or a transformers CLIP) copied with
//! its weight files as GGUF in a ggml block format, loadable by every command.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tastebud_core::gguf::{self, QuantPolicy, Value};
use tastebud_core::models::DIFFUSERS_WEIGHTS;
use tastebud_core::models::clip::CLIP_WEIGHTS;
use tastebud_core::quant::QuantType;

use crate::{shipped, write_atomic};

#[derive(Args)]
pub struct QuantizeArgs {
    /// A diffusers snapshot folder (model_index.json, unet/, vae/, text_encoder/, ...) or a
    /// transformers CLIP folder. Default: the shipped shapes-world generator
    #[arg(long)]
    model: Option<PathBuf>,
    /// Block format: q8_0, q5_1, q5_0, q4_1 or q4_0
    #[arg(long)]
    to: String,
    /// Keep tensors whose names contain this as they are (repeatable). Default: conv_out, the
    /// last convolutions of the UNet and the VAE (measured: on the shapes model q4_0 goes from
    /// 18.7 to 29.2 dB PSNR for 0.1% more bytes; BENCHMARKS.md). `--keep ''` keeps nothing
    #[arg(long, default_value = "conv_out")]
    keep: Vec<String>,
    /// Tensors whose `folder/name` contains PART in TYPE instead of --to (repeatable; the first
    /// match wins), e.g. `--mix unet/up_blocks.1=q8_0` for the layers most sensitive to q4
    #[arg(long, value_name = "PART=TYPE")]
    mix: Vec<String>,
    /// The new folder (must not exist yet, or be empty)
    #[arg(long)]
    out: PathBuf,
    /// Print JSON (every tensor, stored as what and why) instead of a table
    #[arg(long)]
    json: bool,
}

/// The weight file a loader would read in `folder` (its first existing alternative), if any.
fn weight_file(folder: &Path) -> Option<(&'static str, &'static str)> {
    let in_folder = |names: &[&'static str], out: &'static str| {
        names
            .iter()
            .find(|n| folder.join(n).is_file())
            .map(|n| (*n, out))
    };
    in_folder(DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.gguf")
        .or_else(|| in_folder(CLIP_WEIGHTS, "model.gguf"))
}

/// Every folder under `root` (itself included), sorted.
fn folders(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let mut children = vec![];
        for entry in
            std::fs::read_dir(&out[i]).with_context(|| format!("reading {}", out[i].display()))?
        {
            let entry = entry?;
            // Symlinks are not followed: a model folder's files are its own.
            if entry.file_type()?.is_dir() {
                children.push(entry.path());
            }
        }
        children.sort();
        out.extend(children);
        i += 1;
    }
    Ok(out)
}

pub fn quantize(args: &QuantizeArgs) -> Result<()> {
    let kind = QuantType::parse(&args.to)?;
    let mix = args
        .mix
        .iter()
        .map(|m| match m.rsplit_once('=') {
            Some((part, kind)) if !part.is_empty() => {
                Ok((part.to_string(), QuantType::parse(kind)?))
            }
            _ => bail!("--mix {m}: expected PART=TYPE, e.g. unet/up_blocks.1=q8_0"),
        })
        .collect::<Result<Vec<_>>>()?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => shipped::model("generator")?,
    };
    if !model.is_dir() {
        bail!("--model {}: not a folder", model.display());
    }
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--out {}: exists and is not empty (nothing is overwritten)",
            args.out.display()
        );
    }
    let mut rows = vec![];
    let mut tensors = vec![];
    let (mut before, mut after) = (0u64, 0u64);
    for folder in folders(&model)? {
        let relative = folder.strip_prefix(&model)?.to_path_buf();
        let target = args.out.join(&relative);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let weights = weight_file(&folder);
        let all_weights: Vec<&str> = DIFFUSERS_WEIGHTS
            .iter()
            .chain(CLIP_WEIGHTS)
            .copied()
            .collect();
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.file_type()?.is_file() || all_weights.contains(&name.as_str()) {
                continue; // weight files: only the one a loader reads is converted, below
            }
            let bytes = std::fs::read(entry.path())?;
            write_atomic(&target.join(&name), &bytes)?;
        }
        let Some((source, gguf_name)) = weights else {
            continue;
        };
        let path = folder.join(source);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let label = path.display().to_string();
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("tastebud".into()),
            ),
            (
                "tastebud.quantization".to_string(),
                Value::String(if mix.is_empty() {
                    kind.name().to_string()
                } else {
                    format!("{} (mixed: {})", kind.name(), args.mix.join(", "))
                }),
            ),
            (
                "tastebud.source".to_string(),
                Value::String(relative.join(source).display().to_string()),
            ),
        ];
        let policy = QuantPolicy {
            kind,
            keep: args
                .keep
                .iter()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect(),
            mix: mix.clone(),
            scope: relative.display().to_string(),
        };
        let (out, report) = gguf::quantize_weights(&label, &bytes, &policy, metadata)?;
        write_atomic(&target.join(gguf_name), &out)?;
        let quantized = report.iter().filter(|t| t.kept.is_none()).count();
        rows.push(json!({
            "file": relative.join(gguf_name),
            "from": relative.join(source),
            "bytes_before": bytes.len(),
            "bytes_after": out.len(),
            "tensors": report.len(),
            "quantized": quantized,
        }));
        before += bytes.len() as u64;
        after += out.len() as u64;
        tensors.extend(
            report
                .into_iter()
                .map(|t| json!({"file": relative.join(gguf_name), "tensor": t})),
        );
    }
    if rows.is_empty() {
        bail!(
            "--model {}: no weight file found ({} or {})",
            model.display(),
            DIFFUSERS_WEIGHTS.join(", "),
            CLIP_WEIGHTS.join(", ")
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": model, "out": args.out, "to": kind.name(),
                "bytes_before": before, "bytes_after": after, "files": rows, "tensors": tensors,
            }))?
        );
    } else {
        println!(
            "{:<48} {:>12} {:>12} {:>9}",
            "file", "before", "after", "quantized"
        );
        for r in &rows {
            println!(
                "{:<48} {:>12} {:>12} {:>4} / {}",
                r["file"].as_str().unwrap_or_default(),
                r["bytes_before"],
                r["bytes_after"],
                r["quantized"],
                r["tensors"]
            );
        }
        println!(
            "{:<48} {:>12} {:>12}   ({:.2}x)",
            "all weights",
            before,
            after,
            after as f64 / before.max(1) as f64
        );
    }
    Ok(())
}
