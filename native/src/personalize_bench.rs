//! `tastebud personalize bench` and `bench-prior`: heads on simulated people (no one can be
//! asked here), measured against their hidden utilities.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use clap::builder::RangedU64ValueParser;
use serde_json::json;
use tastebud_core::personal::HeadKind;
use tastebud_core::personal::fit::{HeadSettings, Pairs, PretrainConfig, fit_head, pretrain};
use tastebud_core::personal::prior_bench::{self, PriorBenchConfig};
use tastebud_core::personal::simulate::{self, BenchConfig, World};

use crate::personalize::head_device;

/// Counts and sizes the simulations need at least one of (0 would leave nothing to simulate).
fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

#[derive(Args)]
pub struct BenchArgs {
    /// Test people per kind of utility.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    users: usize,
    /// Embedding dimension (768: CLIP ViT-L/14's).
    #[arg(long, default_value_t = 768, value_parser = at_least_one())]
    dimension: usize,
    /// People in the pretraining population.
    #[arg(long, default_value_t = 240, value_parser = at_least_one())]
    population: usize,
    /// PAL's prototypes.
    #[arg(long, default_value_t = 4)]
    prototypes: usize,
    /// VPL's latent size.
    #[arg(long, default_value_t = 8)]
    latent: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let config = BenchConfig {
        users: args.users,
        dimension: args.dimension,
        population: args.population,
        seed: args.seed,
        pretrain: PretrainConfig {
            prototypes: args.prototypes,
            latent: args.latent,
            ..PretrainConfig::default()
        },
        ..BenchConfig::default()
    };
    let device = head_device();
    let started = Instant::now();
    let rows = pollster::block_on(simulate::bench(&config, &device, &mut |what| {
        eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    }))?;
    // Fit time for ~100 pairs, per head, on this machine.
    let world = World::new(
        config.dimension,
        config.attributes,
        config.tastes,
        args.seed,
    );
    let one = simulate::population(&world, 1, 100, config.noise, args.seed + 9);
    let pairs = Pairs::from_store(&one, false)?;
    let population = simulate::population(&world, 60, 40, config.noise, args.seed + 10);
    let population = Pairs::from_store(&population, false)?;
    let mut fit_ms = vec![];
    for (name, kind, on_base) in [
        ("linear", HeadKind::Linear, false),
        ("linear+prior", HeadKind::Linear, true),
        ("mlp", HeadKind::Mlp, false),
        ("pal", HeadKind::Pal, true),
        ("vpl", HeadKind::Vpl, true),
    ] {
        let base = match on_base {
            true => Some(pollster::block_on(pretrain(
                kind,
                &population,
                &PretrainConfig {
                    steps: 20,
                    ..config.pretrain.clone()
                },
                &device,
            ))?),
            false => None,
        };
        let started = Instant::now();
        pollster::block_on(fit_head(
            &HeadSettings {
                fit: config.fit.clone(),
                ..HeadSettings::new(kind)
            },
            base,
            &pairs,
            &device,
        ))?;
        fit_ms.push((name, started.elapsed().as_secs_f64() * 1e3));
    }
    if args.json {
        let out = json!({"config": config, "rows": rows, "fit_100_pairs_ms": fit_ms.iter()
            .map(|(k, ms)| (k.to_string(), json!(ms))).collect::<serde_json::Map<_, _>>(),
            "seconds": started.elapsed().as_secs_f64()});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "| people | head | pairs | {} |",
        config
            .answered
            .iter()
            .map(|n| format!("{n} answered"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(config.answered.len()));
    let mut keys: Vec<_> = rows.iter().map(|r| (r.kind, r.head, r.selection)).collect();
    keys.dedup();
    for (kind, head, selection) in keys {
        let cells: Vec<String> = config
            .answered
            .iter()
            .map(|&n| {
                rows.iter()
                    .find(|r| {
                        r.kind == kind
                            && r.head == head
                            && r.selection == selection
                            && r.answered == n
                    })
                    .map_or("-".into(), |r| format!("{:.1}%", 100.0 * r.accuracy))
            })
            .collect();
        println!(
            "| {} | {} | {selection} | {} |",
            kind.name(),
            head,
            cells.join(" | ")
        );
    }
    println!();
    for (name, ms) in fit_ms {
        println!("fit {name} on 100 pairs: {ms:.0} ms");
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchPriorArgs {
    /// New people tested.
    #[arg(long, default_value_t = 30, value_parser = at_least_one())]
    users: usize,
    /// Embedding dimension (768: CLIP ViT-L/14's).
    #[arg(long, default_value_t = 768, value_parser = at_least_one())]
    dimension: usize,
    /// The images' underlying attributes.
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    attributes: usize,
    /// People in the population, and random pairs each answered.
    #[arg(long, default_value_t = 240, value_parser = at_least_one())]
    population: usize,
    #[arg(long, default_value_t = 60, value_parser = at_least_one())]
    pairs: usize,
    /// The prior's largest rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

pub fn bench_prior(args: &BenchPriorArgs) -> Result<()> {
    let config = PriorBenchConfig {
        users: args.users,
        dimension: args.dimension,
        attributes: args.attributes,
        population: args.population,
        population_pairs: args.pairs,
        rank: args.rank,
        seed: args.seed,
        ..PriorBenchConfig::default()
    };
    let device = head_device();
    let started = Instant::now();
    let report = pollster::block_on(prior_bench::prior_bench(&config, &device, &mut |what| {
        eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    }))?;
    let rows = &report.rows;
    if args.json {
        let out = json!({"config": config, "method": report.method, "rank": report.rank, "rows": rows,
            "seconds": started.elapsed().as_secs_f64()});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let answered = &config.answered;
    println!(
        "| head | {} |",
        answered
            .iter()
            .map(|n| format!("{n} answered"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(answered.len()));
    let mut heads: Vec<_> = rows.iter().map(|r| r.head).collect();
    heads.dedup();
    for head in heads {
        let cells: Vec<String> = rows
            .iter()
            .filter(|r| r.head == head)
            .map(|r| format!("{:.1}%", 100.0 * r.accuracy))
            .collect();
        println!("| {head} | {} |", cells.join(" | "));
    }
    println!(
        "\nthe prior, chosen on held-out people: {} at rank {}",
        report.method.name(),
        report.rank
    );
    Ok(())
}
