//! Batch runs of `generate` and `optimize`: a JSONL prompt file in, a folder out, one PNG and one
//! JSON record per (prompt, seed). Resumable (a job whose record exists is skipped) and split
//! across processes, GPUs or machines with `--shard I/N`: every shard runs the same command with
//! its own I, into one shared folder or separate ones, and the records merge by concatenation
//! (`cat DIR/*.json > all.jsonl`, which `tastebud shapes judge-set` reads).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};

use crate::write_atomic;

/// The settings a folder was filled with: a later run into it must use the same.
pub const SETTINGS_FILE: &str = ".tastebud-run.json";

#[derive(Args, Default)]
pub struct BatchArgs {
    /// Run every line of a JSONL prompt file instead of one --prompt: `{"prompt": TEXT}` plus
    /// optional `"seed": S` or `"seeds": [S, ...]` and `"steps": 1-4`; other fields (GenEval
    /// metadata, ids) are copied into the records. Needs --out-dir.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "out", "noise", "seed"])]
    pub prompts: Option<PathBuf>,
    /// Where --prompts runs write LINE-SEED.png and LINE-SEED.json (created if missing; jobs
    /// whose record exists are skipped, so a stopped run resumes).
    #[arg(long, value_name = "DIR", requires = "prompts")]
    pub out_dir: Option<PathBuf>,
    /// Seeds 0..N for prompt lines that name none.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "prompts")]
    pub seeds_per_prompt: u64,
    /// Run only this share of the jobs, I/N (0-based: 0/4 ... 3/4), every N-th job from the I-th.
    #[arg(long, value_name = "I/N", requires = "prompts")]
    pub shard: Option<String>,
}

/// One image to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// 1-based line of the prompt file.
    pub line: usize,
    pub prompt: String,
    pub seed: u64,
    /// The line's own step count, if it sets one.
    pub steps: Option<usize>,
    /// The line's other fields, copied into the record.
    pub extra: Map<String, Value>,
}

impl Job {
    /// What to generate: the job's prompt and seed, its line's steps or else the command's.
    pub fn request(&self, noise: &crate::generate::NoiseArgs) -> tastebud_core::pipeline::Request {
        tastebud_core::pipeline::Request {
            prompt: self.prompt.clone(),
            noise: None,
            seed: self.seed,
            steps: self.steps.unwrap_or(noise.steps),
            height: noise.height,
            width: noise.width,
        }
    }

    /// File stem of this job's outputs.
    pub fn stem(&self) -> String {
        format!("{:05}-{}", self.line, self.seed)
    }
}

/// The most seeds one prompt line may ask for (`seeds`, or `--seeds-per-prompt`).
pub const MAX_SEEDS_PER_PROMPT: u64 = 100_000;

/// Every job of a prompt file, in file order (a line's seeds in the order given). A bad line
/// stops everything before anything runs, naming the line.
pub fn read_jobs(path: &Path, default_seeds: u64) -> Result<Vec<Job>> {
    if default_seeds > MAX_SEEDS_PER_PROMPT {
        bail!("--seeds-per-prompt {default_seeds}: at most {MAX_SEEDS_PER_PROMPT}");
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut jobs = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON (nothing was run)", at()))?;
        let Value::Object(mut extra) = value else {
            bail!("{}: not a JSON object (nothing was run)", at());
        };
        let prompt = match extra.get("prompt") {
            Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
            _ => bail!("{}: needs a non-empty \"prompt\" (nothing was run)", at()),
        };
        let as_seed = |v: &Value| {
            v.as_u64().with_context(|| {
                format!(
                    "{}: a seed must be a whole number >= 0, not {v} (nothing was run)",
                    at()
                )
            })
        };
        let seeds = match (extra.remove("seed"), extra.remove("seeds")) {
            (Some(_), Some(_)) => bail!("{}: give \"seed\" or \"seeds\", not both", at()),
            (Some(seed), None) => vec![as_seed(&seed)?],
            (None, Some(Value::Array(list))) if !list.is_empty() => {
                list.iter().map(as_seed).collect::<Result<_>>()?
            }
            (None, Some(other)) => {
                bail!("{}: \"seeds\" must be a non-empty list, not {other}", at())
            }
            (None, None) => (0..default_seeds).collect(),
        };
        if seeds.len() as u64 > MAX_SEEDS_PER_PROMPT {
            bail!(
                "{}: {} seeds, over the limit of {MAX_SEEDS_PER_PROMPT} per prompt (nothing was run)",
                at(),
                seeds.len()
            );
        }
        let steps = match extra.remove("steps") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(s @ 1..=4) => Some(s as usize),
                _ => bail!(
                    "{}: \"steps\" must be 1 to 4, not {v} (nothing was run)",
                    at()
                ),
            },
        };
        for seed in seeds {
            jobs.push(Job {
                line: i + 1,
                prompt: prompt.clone(),
                seed,
                steps,
                extra: extra.clone(),
            });
        }
    }
    if jobs.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(jobs)
}

/// `I/N`: this process runs jobs I, I+N, I+2N, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || format!("--shard {text}: expected I/N with 0 <= I < N (e.g. 0/4 ... 3/4)");
        let (i, n) = text.split_once('/').with_context(bad)?;
        let index: usize = i.trim().parse().ok().with_context(bad)?;
        let count: usize = n.trim().parse().ok().with_context(bad)?;
        if count == 0 || index >= count {
            bail!("{}", bad());
        }
        Ok(Shard { index, count })
    }

    pub fn select(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .enumerate()
            .filter(|(k, _)| k % self.count == self.index)
            .map(|(_, job)| job)
            .collect()
    }
}

/// A batch run's folder and this process's jobs.
pub struct Batch {
    pub dir: PathBuf,
    pub jobs: Vec<Job>,
}

impl Batch {
    /// Reads the prompt file, takes this shard's jobs and claims the folder for `settings` (what
    /// decides the images: model, method, sizes). A folder filled with other settings is refused,
    /// so a resumed run never mixes two runs' images.
    pub fn open(args: &BatchArgs, settings: Value) -> Result<Self> {
        let path = args.prompts.as_ref().context("--prompts: no prompt file")?;
        let dir = args
            .out_dir
            .clone()
            .context("--prompts needs --out-dir (the folder the images and records go to)")?;
        let mut jobs = read_jobs(path, args.seeds_per_prompt)?;
        if let Some(shard) = &args.shard {
            jobs = Shard::parse(shard)?.select(jobs);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(SETTINGS_FILE);
        if file.exists() {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let before: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            if before != settings {
                bail!(
                    "{} holds images made with other settings ({}); use another --out-dir, or \
                     delete the folder to start over",
                    dir.display(),
                    differences(&before, &settings)
                );
            }
        } else {
            write_atomic(&file, format!("{settings:#}\n").as_bytes())?;
        }
        Ok(Batch { dir, jobs })
    }

    /// Runs `make` on every job whose record is missing, writing its PNG, then its record (so a
    /// record always has its image). Returns (made, skipped).
    pub fn run(
        &self,
        stop: &AtomicBool,
        mut make: impl FnMut(&Job) -> Result<Option<(Vec<u8>, Value)>>,
    ) -> Result<(usize, usize)> {
        let todo: Vec<&Job> = self
            .jobs
            .iter()
            .filter(|j| !self.dir.join(format!("{}.json", j.stem())).exists())
            .collect();
        let skipped = self.jobs.len() - todo.len();
        if skipped > 0 {
            eprintln!(
                "{skipped} of {} images already in {}: resuming",
                self.jobs.len(),
                self.dir.display()
            );
        }
        let progress = crate::generate::bar(
            false,
            "{bar:30} {pos}/{len} images ({elapsed}, {eta} left) {msg}",
        );
        progress.set_length(todo.len() as u64);
        let mut made = 0;
        for job in todo {
            progress.set_message(format!("line {} seed {}", job.line, job.seed));
            let Some((png, record)) = make(job)? else {
                break;
            };
            let image = format!("{}.png", job.stem());
            write_atomic(&self.dir.join(&image), &png)?;
            let mut row = job.extra.clone();
            row.insert("prompt".into(), json!(job.prompt));
            row.insert("seed".into(), json!(job.seed));
            row.insert("line".into(), json!(job.line));
            row.insert("image".into(), json!(image));
            if let Value::Object(fields) = record {
                row.extend(fields);
            }
            let text = format!("{}\n", Value::Object(row));
            write_atomic(
                &self.dir.join(format!("{}.json", job.stem())),
                text.as_bytes(),
            )?;
            made += 1;
            progress.inc(1);
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        progress.finish_and_clear();
        let left = self.jobs.len() - skipped - made;
        if left > 0 {
            bail!(
                "stopped with {left} images left; run the same command again to resume \
                 ({made} made now, {skipped} before)"
            );
        }
        eprintln!(
            "{} images in {} ({made} made now, {skipped} before)",
            self.jobs.len(),
            self.dir.display()
        );
        Ok((made, skipped))
    }
}

/// The top-level settings that differ, as `key: before -> now`.
fn differences(before: &Value, now: &Value) -> String {
    let (Some(a), Some(b)) = (before.as_object(), now.as_object()) else {
        return "unreadable settings".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.iter()
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("unset".to_string(), |v| v.to_string());
            format!(
                "{k}: {} -> {}",
                show(a.get(k.as_str())),
                show(b.get(k.as_str()))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt file in the temporary folder.
    fn file(text: &str) -> PathBuf {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tastebud-batch-{}-{}.jsonl",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn lines_expand_to_jobs_with_their_seeds_steps_and_fields() {
        let f = file(
            "{\"prompt\": \"a red circle\", \"tag\": \"single_object\"}\n\n\
             {\"prompt\": \"two squares\", \"seeds\": [7, 9], \"steps\": 2}\n\
             {\"prompt\": \"a blue square\", \"seed\": 5}\n",
        );
        let jobs = read_jobs(&f, 2).unwrap();
        let got: Vec<(usize, &str, u64, Option<usize>)> = jobs
            .iter()
            .map(|j| (j.line, j.prompt.as_str(), j.seed, j.steps))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a red circle", 0, None),
                (1, "a red circle", 1, None),
                (3, "two squares", 7, Some(2)),
                (3, "two squares", 9, Some(2)),
                (4, "a blue square", 5, None),
            ]
        );
        assert_eq!(jobs[0].extra["tag"], "single_object");
        assert!(!jobs[2].extra.contains_key("seeds"));
        assert_eq!(jobs[2].stem(), "00003-7");
    }

    #[test]
    fn a_bad_line_is_named_and_nothing_runs() {
        for (text, says) in [
            (
                "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n",
                "line 2: not JSON",
            ),
            ("[1, 2]\n", "line 1: not a JSON object"),
            (
                "{\"prompt\": \"  \"}\n",
                "line 1: needs a non-empty \"prompt\"",
            ),
            (
                "{\"prompt\": \"a\", \"seed\": -1}\n",
                "line 1: a seed must be",
            ),
            (
                "{\"prompt\": \"a\", \"seeds\": []}\n",
                "line 1: \"seeds\" must be",
            ),
            (
                "{\"prompt\": \"a\", \"steps\": 9}\n",
                "line 1: \"steps\" must be 1 to 4",
            ),
            (
                "{\"prompt\": \"a\", \"seed\": 1, \"seeds\": [2]}\n",
                "not both",
            ),
            ("\n\n", "no prompts"),
        ] {
            let f = file(text);
            let err = format!("{:#}", read_jobs(&f, 1).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn shards_cover_every_job_once() {
        let f = file(&"{\"prompt\": \"a red circle\"}\n".repeat(7));
        let jobs = read_jobs(&f, 3).unwrap();
        let mut seen = vec![];
        for i in 0..4 {
            let shard = Shard::parse(&format!("{i}/4")).unwrap();
            let part = shard.select(jobs.clone());
            assert!(part.len() == 5 || part.len() == 6, "{}", part.len());
            seen.extend(part.iter().map(|j| j.stem()));
        }
        seen.sort();
        let mut all: Vec<String> = jobs.iter().map(|j| j.stem()).collect();
        all.sort();
        assert_eq!(seen, all);
        for bad in ["4/4", "1/0", "1", "a/b", "-1/2"] {
            let err = format!("{:#}", Shard::parse(bad).unwrap_err());
            assert!(err.contains(&format!("--shard {bad}")), "{err}");
        }
    }

    #[test]
    fn settings_differences_are_named() {
        let a = json!({"model": "m", "steps": 1});
        let b = json!({"model": "m", "steps": 2, "lr": 5});
        assert_eq!(differences(&a, &b), "lr: unset -> 5; steps: 1 -> 2");
    }
}
