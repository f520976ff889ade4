//! Does the population prior recover tastes that people share? A simulated population whose
//! tastes are sparse mixes of a few hidden directions (each person one or two of them, signed,
//! plus a small personal part) answers random pairs; a new person answers 5/20/50 random pairs,
//! and each head is scored on held-out pairs against their hidden utility:
//!
//! - `oracle`: knows the hidden directions and fits only their weights (a prior whose factors
//!   are the directions, flat on their weights, with no residual);
//! - `linear+prior`: the shipped prior ([`super::prior::pretrain_linear`] with
//!   [`PriorMethod::Auto`]: one-by-one or joint, and the rank, chosen on held-out people);
//! - `linear+prior-one-by-one`: the prior as it was made before 2026-12-02: the principal
//!   directions of people's heads fitted one by one, at the requested rank, mean unshrunk;
//! - `linear` (from scratch) and `pal` (a person's mixture on the PAL base).

use burn::tensor::Device;
use serde::Serialize;

use super::fit::{FitConfig, HeadSettings, Pairs, PretrainConfig, fit_head, pretrain};
use super::heads::LinearHead;
use super::prior::{PriorMethod, PriorValues, person_heads, pretrain_linear};
use super::simulate::{Selection, TestCase, User, World, accuracy, answers, ask, copy_head};
use super::{HeadConfig, HeadKind, HeadModel, PersonalHead};
use crate::Result;
use crate::noise::Rng;

/// The oracle's prior standard deviation on a hidden direction's weight: far beyond any
/// person's (a weight is about 1 / (0.1 x the utility's spread), i.e. tens), so it is flat.
const ORACLE_SCALE: f32 = 100.0;

/// What [`prior_bench`] runs.
#[derive(Debug, Clone, Serialize)]
pub struct PriorBenchConfig {
    pub dimension: usize,
    pub attributes: usize,
    /// Hidden taste directions.
    pub tastes: usize,
    /// The weight of each person's own direction next to their mix of hidden ones.
    pub own: f32,
    pub population: usize,
    pub population_pairs: usize,
    /// New people tested.
    pub users: usize,
    pub pool: usize,
    pub held_out_pairs: usize,
    pub answered: Vec<usize>,
    pub noise: f32,
    /// The prior's (largest) rank.
    pub rank: usize,
    pub pretrain: PretrainConfig,
    pub fit: FitConfig,
    pub seed: u64,
}

impl Default for PriorBenchConfig {
    fn default() -> Self {
        Self {
            dimension: 768,
            attributes: 16,
            tastes: 4,
            own: 0.2,
            population: 240,
            population_pairs: 60,
            users: 30,
            pool: 60,
            held_out_pairs: 400,
            answered: vec![5, 20, 50],
            noise: 0.1,
            rank: 16,
            pretrain: PretrainConfig::default(),
            fit: FitConfig::default(),
            seed: 0,
        }
    }
}

/// Mean held-out accuracy of `head` after `answered` random answers, over the new people.
#[derive(Debug, Clone, Serialize)]
pub struct PriorBenchRow {
    pub head: &'static str,
    pub answered: usize,
    pub accuracy: f32,
}

/// What [`prior_bench`] found: the rank the prior chose, and the accuracies.
#[derive(Debug, Clone, Serialize)]
pub struct PriorBenchReport {
    /// How the shipped prior was made, and at which rank ([`PriorMethod::Auto`]'s choice).
    pub method: PriorMethod,
    pub rank: usize,
    pub rows: Vec<PriorBenchRow>,
}

/// A linear base head carrying `prior`.
fn linear_base(prior: PriorValues, device: &Device) -> PersonalHead {
    let rank = prior.rank;
    linear_base_head(prior.into_head(device), rank)
}

/// `head` (a linear head carrying a prior of `rank`) as a base.
fn linear_base_head(head: LinearHead, rank: usize) -> PersonalHead {
    let dimension = head.linear.weight.val().dims()[0];
    let mut config = HeadConfig::new(HeadKind::Linear, dimension, false);
    config.rank = rank;
    PersonalHead {
        config,
        model: HeadModel::Linear(head).frozen(),
    }
}

/// Runs the benchmark; `progress` hears each step.
pub async fn prior_bench(
    config: &PriorBenchConfig,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<PriorBenchReport> {
    let world = World::new(
        config.dimension,
        config.attributes,
        config.tastes,
        config.seed,
    );
    let person = |rng: &mut Rng| User::sparse(&world, config.own, config.noise, rng);
    let store = answers(
        &world,
        config.population,
        config.population_pairs,
        config.seed + 1,
        |_, rng| person(rng),
    );
    let pairs = Pairs::from_store(&store, false)?;
    progress("pretraining the linear prior");
    let (prior, method, rank) =
        pretrain_linear(&pairs, config.rank, PriorMethod::Auto, &config.fit, device).await?;
    let prior = linear_base_head(prior, rank);
    progress(&format!("chosen: {} at rank {rank}", method.name()));
    let (heads, _) = person_heads(&pairs, &config.fit, device).await?;
    let one_by_one = linear_base(PriorValues::from_heads(&heads, config.rank)?, device);
    progress("pretraining the PAL base");
    let pal = pretrain(HeadKind::Pal, &pairs, &config.pretrain, device).await?;
    let oracle = linear_base(
        PriorValues {
            mean: vec![0.0; config.dimension],
            factors: world.taste_factors(ORACLE_SCALE),
            rank: config.tastes,
            scale: 0.0,
        },
        device,
    );
    let bases: [(&'static str, HeadKind, Option<&PersonalHead>); 5] = [
        ("oracle", HeadKind::Linear, Some(&oracle)),
        ("linear+prior", HeadKind::Linear, Some(&prior)),
        (
            "linear+prior-one-by-one",
            HeadKind::Linear,
            Some(&one_by_one),
        ),
        ("linear", HeadKind::Linear, None),
        ("pal", HeadKind::Pal, Some(&pal)),
    ];
    let mut sums = vec![0.0f32; bases.len() * config.answered.len()];
    let mut rng = Rng::new(config.seed + 2);
    let most = config.answered.iter().copied().max().unwrap_or(0);
    for u in 0..config.users {
        let user = person(&mut rng);
        let case = TestCase::new(&world, user, config.pool, config.held_out_pairs, &mut rng);
        let asked = ask(&case, most, Selection::Random, 0, &mut rng, device).await?;
        for (j, &n) in config.answered.iter().enumerate() {
            let mut store = asked.clone();
            store.records.truncate(n);
            let answered = Pairs::from_store(&store, false)?;
            for (i, &(_, kind, base)) in bases.iter().enumerate() {
                let settings = HeadSettings {
                    fit: config.fit.clone(),
                    ..HeadSettings::new(kind)
                };
                let head = fit_head(&settings, base.map(copy_head), &answered, device).await?;
                sums[i * config.answered.len() + j] += accuracy(&head, &case, device).await?;
            }
        }
        progress(&format!("person {}/{}", u + 1, config.users));
    }
    let rows = bases
        .iter()
        .enumerate()
        .flat_map(|(i, &(head, _, _))| {
            config
                .answered
                .iter()
                .enumerate()
                .map(move |(j, &answered)| (i, j, head, answered))
        })
        .map(|(i, j, head, answered)| PriorBenchRow {
            head,
            answered,
            accuracy: sums[i * config.answered.len() + j] / config.users as f32,
        })
        .collect();
    Ok(PriorBenchReport { method, rank, rows })
}
