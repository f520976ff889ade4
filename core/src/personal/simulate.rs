//! Simulated people, for measuring heads without asking anyone: images are unit embeddings with
//! low-rank structure (like CLIP's, whose images vary along far fewer directions than their
//! dimension), people have hidden utilities over them drawn around a few shared tastes, and
//! answer pairs noisily (Bradley-Terry with a temperature).
//!
//! [`bench`] fits every head from 5/10/20/25/50 answered pairs per person, chosen at random or
//! actively (BALD: by a linear head's Laplace posterior for the linear and MLP heads, by the
//! VPL base's latent posterior for PAL and VPL), and reports pairwise accuracy on held-out
//! pairs against the hidden utility.

use burn::tensor::Device;
use serde::Serialize;

use super::active::choose_next;
use super::fit::{FitConfig, HeadSettings, MIN_PAIRS, Pairs, PretrainConfig, fit_head, pretrain};
use super::store::{Candidate, Choice, Preference, PreferenceStore};
use super::{HeadKind, HeadModel, PersonalHead};
use crate::Result;
use crate::noise::Rng;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = dot(&v, &v).sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The embedding space: `x = unit(A s + noise)`, `s` standard normal in `attributes` dimensions.
#[derive(Debug, Clone)]
pub struct World {
    pub dimension: usize,
    pub attributes: usize,
    /// `[dimension, attributes]`, row-major.
    basis: Vec<f32>,
    /// Shared tastes: unit directions in the image space.
    tastes: Vec<Vec<f32>>,
}

impl World {
    pub fn new(dimension: usize, attributes: usize, tastes: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let scale = 1.0 / (attributes as f32).sqrt();
        let basis = rng
            .gaussian(dimension * attributes)
            .iter()
            .map(|v| v * scale)
            .collect();
        let mut world = Self {
            dimension,
            attributes,
            basis,
            tastes: vec![],
        };
        world.tastes = (0..tastes).map(|_| world.direction(&mut rng)).collect();
        world
    }

    fn lift(&self, s: &[f32]) -> Vec<f32> {
        (0..self.dimension)
            .map(|i| {
                dot(
                    &self.basis[i * self.attributes..(i + 1) * self.attributes],
                    s,
                )
            })
            .collect()
    }

    /// A random unit direction among the images' attributes.
    fn direction(&self, rng: &mut Rng) -> Vec<f32> {
        unit(self.lift(&rng.gaussian(self.attributes)))
    }

    /// `n` unit image embeddings.
    pub fn images(&self, n: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                let x = self.lift(&rng.gaussian(self.attributes));
                let noise = rng.gaussian(self.dimension);
                let sigma = 0.2 / (self.dimension as f32).sqrt();
                unit(x.iter().zip(&noise).map(|(a, e)| a + sigma * e).collect())
            })
            .collect()
    }

    /// A mix of the shared tastes (Dirichlet(1) weights) plus a personal part.
    fn taste(&self, rng: &mut Rng) -> Vec<f32> {
        let weights: Vec<f32> = (0..self.tastes.len())
            .map(|_| -(rng.uniform().ln() as f32))
            .collect();
        let total: f32 = weights.iter().sum();
        let own = self.direction(rng);
        let mut v = vec![0.0; self.dimension];
        for (w, t) in weights.iter().zip(&self.tastes) {
            v.iter_mut().zip(t).for_each(|(v, t)| *v += w / total * t);
        }
        unit(v.iter().zip(&own).map(|(v, o)| v + 0.3 * o).collect())
    }
}

impl World {
    /// A sparse mix of the shared tastes: one or two of them with signed Gaussian weights, plus
    /// `own` of a personal direction.
    fn sparse_taste(&self, own: f32, rng: &mut Rng) -> Vec<f32> {
        let wanted = (1 + rng.below(2)).min(self.tastes.len());
        let mut picked: Vec<usize> = vec![];
        while picked.len() < wanted {
            let t = rng.below(self.tastes.len());
            if !picked.contains(&t) {
                picked.push(t);
            }
        }
        let mut v = vec![0.0; self.dimension];
        for &t in &picked {
            let w = rng.gaussian(1)[0];
            v.iter_mut()
                .zip(&self.tastes[t])
                .for_each(|(v, d)| *v += w * d);
        }
        let mine = self.direction(rng);
        unit(v.iter().zip(&mine).map(|(v, o)| v + own * o).collect())
    }

    /// The shared tastes as a prior's factors, `[dimension, tastes]` row-major, times `scale`.
    pub(super) fn taste_factors(&self, scale: f32) -> Vec<f32> {
        (0..self.dimension)
            .flat_map(|i| self.tastes.iter().map(move |t| t[i] * scale))
            .collect()
    }
}

/// The shape of a person's hidden utility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserKind {
    /// `u = theta . x`.
    Linear,
    /// Likes two distinct styles: `u = max(theta1 . x, theta2 . x)`.
    TwoStyles,
    /// Likes a moderate amount of something: `u = -(theta . x - m)^2`.
    Moderate,
}

impl UserKind {
    pub const ALL: [UserKind; 3] = [Self::Linear, Self::TwoStyles, Self::Moderate];

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::TwoStyles => "two-styles",
            Self::Moderate => "moderate",
        }
    }
}

/// A simulated person.
#[derive(Debug, Clone)]
pub struct User {
    pub kind: UserKind,
    directions: Vec<Vec<f32>>,
    moderate: f32,
    /// Bradley-Terry temperature of their answers.
    pub temperature: f32,
}

impl User {
    /// A person of `kind` in `world`, answering with a temperature of `noise` times the spread
    /// of their utility over typical images.
    pub fn new(world: &World, kind: UserKind, noise: f32, rng: &mut Rng) -> Self {
        let directions = match kind {
            UserKind::TwoStyles => vec![world.taste(rng), world.taste(rng)],
            _ => vec![world.taste(rng)],
        };
        Self::with_directions(world, kind, directions, noise, rng)
    }

    /// A linear person whose taste is a sparse mix of the world's shared tastes plus `own` of
    /// their own.
    pub fn sparse(world: &World, own: f32, noise: f32, rng: &mut Rng) -> Self {
        let taste = world.sparse_taste(own, rng);
        Self::with_directions(world, UserKind::Linear, vec![taste], noise, rng)
    }

    fn with_directions(
        world: &World,
        kind: UserKind,
        directions: Vec<Vec<f32>>,
        noise: f32,
        rng: &mut Rng,
    ) -> Self {
        let mut user = Self {
            kind,
            directions,
            moderate: 0.0,
            temperature: 1.0,
        };
        let sample = world.images(200, rng);
        if kind == UserKind::Moderate {
            // The liked amount: somewhat above typical, so about a third of images exceed it.
            let mut p: Vec<f32> = sample.iter().map(|x| dot(&user.directions[0], x)).collect();
            p.sort_by(f32::total_cmp);
            user.moderate = p[p.len() * 2 / 3];
        }
        let u: Vec<f32> = sample.iter().map(|x| user.utility(x)).collect();
        let mean = u.iter().sum::<f32>() / u.len() as f32;
        let sd = (u.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / u.len() as f32).sqrt();
        user.temperature = (noise * sd).max(1e-6);
        user
    }

    pub fn utility(&self, x: &[f32]) -> f32 {
        match self.kind {
            UserKind::Linear => dot(&self.directions[0], x),
            UserKind::TwoStyles => dot(&self.directions[0], x).max(dot(&self.directions[1], x)),
            UserKind::Moderate => -(dot(&self.directions[0], x) - self.moderate).powi(2),
        }
    }

    /// A noisy answer: `a` with probability `sigmoid((u(a) - u(b)) / temperature)`.
    pub fn answer(&self, a: &[f32], b: &[f32], rng: &mut Rng) -> Choice {
        let m = (self.utility(a) - self.utility(b)) / self.temperature;
        let p = 1.0 / (1.0 + (-f64::from(m)).exp());
        if rng.uniform() <= p {
            Choice::A
        } else {
            Choice::B
        }
    }
}

/// A preference record for simulated images `a` and `b` (embeddings only).
pub fn record(a: &[f32], b: &[f32], choice: Choice, user: Option<String>) -> Preference {
    Preference {
        prompt: String::new(),
        a: Candidate {
            image: None,
            embedding: Some(a.to_vec()),
        },
        b: Candidate {
            image: None,
            embedding: Some(b.to_vec()),
        },
        choice,
        model: None,
        timestamp: 0,
        user,
        prompt_embedding: None,
    }
}

/// A population's preference file: `users` people (kinds in turn), `pairs` random pairs each.
pub fn population(
    world: &World,
    users: usize,
    pairs: usize,
    noise: f32,
    seed: u64,
) -> PreferenceStore {
    answers(world, users, pairs, seed, |u, rng| {
        User::new(world, UserKind::ALL[u % UserKind::ALL.len()], noise, rng)
    })
}

/// `users` people made by `person`, `pairs` random pairs each, as a preference file.
pub(super) fn answers(
    world: &World,
    users: usize,
    pairs: usize,
    seed: u64,
    mut person: impl FnMut(usize, &mut Rng) -> User,
) -> PreferenceStore {
    let mut rng = Rng::new(seed);
    let mut store = PreferenceStore::new(Some("simulated".into()));
    for u in 0..users {
        let user = person(u, &mut rng);
        let images = world.images(2 * pairs, &mut rng);
        for p in images.chunks(2) {
            let choice = user.answer(&p[0], &p[1], &mut rng);
            store
                .records
                .push(record(&p[0], &p[1], choice, Some(format!("user-{u}"))));
        }
    }
    store
}

/// What [`bench`] runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub dimension: usize,
    pub attributes: usize,
    pub tastes: usize,
    /// People in the pretraining population, and pairs each answered.
    pub population: usize,
    pub population_pairs: usize,
    /// Test people per kind.
    pub users: usize,
    /// Images a test person may be asked about, and held-out images.
    pub pool: usize,
    pub held_out_pairs: usize,
    pub answered: Vec<usize>,
    /// Answer temperature as a fraction of a person's utility spread.
    pub noise: f32,
    /// Latent samples for BALD.
    pub samples: usize,
    pub pretrain: PretrainConfig,
    pub fit: FitConfig,
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            dimension: 768,
            attributes: 16,
            tastes: 4,
            population: 240,
            population_pairs: 40,
            users: 10,
            pool: 60,
            held_out_pairs: 400,
            answered: vec![5, 10, 20, 25, 50],
            noise: 0.1,
            samples: 64,
            pretrain: PretrainConfig::default(),
            fit: FitConfig::default(),
            seed: 0,
        }
    }
}

/// One cell of the report: mean held-out accuracy of `head` for `kind` people after `answered`
/// pairs chosen by `selection`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub kind: UserKind,
    /// The head's name (`linear+prior`: a linear head on the population prior).
    pub head: &'static str,
    pub selection: &'static str,
    pub answered: usize,
    pub accuracy: f32,
}

/// A test person's data: the pool they are asked about and held-out pairs with the truth.
pub(super) struct TestCase {
    pub user: User,
    pub pool: Vec<Vec<f32>>,
    pub held_a: Vec<Vec<f32>>,
    pub held_b: Vec<Vec<f32>>,
    pub truth: Vec<bool>,
}

impl TestCase {
    /// `user` with a pool of `pool` images to be asked about and `held_out` pairs to test on.
    pub(super) fn new(
        world: &World,
        user: User,
        pool: usize,
        held_out: usize,
        rng: &mut Rng,
    ) -> Self {
        let pool = world.images(pool, rng);
        let held = world.images(2 * held_out, rng);
        let (held_a, held_b): (Vec<_>, Vec<_>) =
            held.chunks(2).map(|p| (p[0].clone(), p[1].clone())).unzip();
        let truth = held_a
            .iter()
            .zip(&held_b)
            .map(|(a, b)| user.utility(a) > user.utility(b))
            .collect();
        Self {
            user,
            pool,
            held_a,
            held_b,
            truth,
        }
    }
}

pub(super) async fn accuracy(head: &PersonalHead, case: &TestCase, device: &Device) -> Result<f32> {
    let a = head.score_vectors(&case.held_a, None, device).await?;
    let b = head.score_vectors(&case.held_b, None, device).await?;
    let right = a
        .iter()
        .zip(&b)
        .zip(&case.truth)
        .filter(|((a, b), t)| (a > b) == **t)
        .count();
    Ok(right as f32 / case.truth.len() as f32)
}

/// How a simulated person's questions are chosen.
#[derive(Clone, Copy)]
pub(super) enum Selection<'a> {
    Random,
    /// Where a linear head refitted on the answers so far is least sure (Laplace BALD).
    Linear(&'a FitConfig),
    /// Where a VPL base, given the answers so far, is least sure (latent BALD).
    Vpl(&'a PersonalHead),
    /// Where a linear head fitted under this population prior is least sure (Laplace BALD).
    Prior(&'a PersonalHead, &'a FitConfig),
}

/// The `count` pairs a person answers, from their pool, chosen by `selection` (at random while
/// a linear head has too few answers to be fitted).
pub(super) async fn ask(
    case: &TestCase,
    count: usize,
    selection: Selection<'_>,
    samples: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<PreferenceStore> {
    let mut store = PreferenceStore::new(None);
    let mut asked: Vec<(usize, usize)> = vec![];
    let n = case.pool.len();
    for _ in 0..count {
        let pairs = Pairs::from_store(&store, false)?;
        let seed = rng.next_u64();
        let chosen = match selection {
            Selection::Random => None,
            Selection::Linear(fit) if pairs.len() >= MIN_PAIRS => {
                let settings = HeadSettings {
                    fit: fit.clone(),
                    ..HeadSettings::new(HeadKind::Linear)
                };
                let head = fit_head(&settings, None, &pairs, device).await?;
                choose_next(
                    &head, &pairs, &case.pool, None, &asked, None, samples, seed, device,
                )
                .await?
            }
            Selection::Linear(_) => None,
            Selection::Vpl(base) => {
                choose_next(
                    base, &pairs, &case.pool, None, &asked, None, samples, seed, device,
                )
                .await?
            }
            Selection::Prior(base, fit) => {
                let settings = HeadSettings {
                    fit: fit.clone(),
                    ..HeadSettings::new(HeadKind::Linear)
                };
                let head = fit_head(&settings, Some(copy_head(base)), &pairs, device).await?;
                choose_next(
                    &head, &pairs, &case.pool, None, &asked, None, samples, seed, device,
                )
                .await?
            }
        };
        let (i, j) = match chosen {
            Some(c) => (c.first, c.second),
            None => loop {
                let (i, j) = (rng.below(n), rng.below(n));
                if i != j && !asked.contains(&(i, j)) && !asked.contains(&(j, i)) {
                    break (i, j);
                }
            },
        };
        asked.push((i, j));
        let choice = case.user.answer(&case.pool[i], &case.pool[j], rng);
        store
            .records
            .push(record(&case.pool[i], &case.pool[j], choice, None));
    }
    Ok(store)
}

/// The heads the bench fits, by name: `linear+prior` is a linear head on the population prior.
const HEADS: [(&str, HeadKind); 5] = [
    ("linear", HeadKind::Linear),
    ("mlp", HeadKind::Mlp),
    ("linear+prior", HeadKind::Linear),
    ("pal", HeadKind::Pal),
    ("vpl", HeadKind::Vpl),
];

/// Runs the benchmark; `progress` hears each finished (kind, user) pair.
pub async fn bench(
    config: &BenchConfig,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchRow>> {
    let world = World::new(
        config.dimension,
        config.attributes,
        config.tastes,
        config.seed,
    );
    let population = population(
        &world,
        config.population,
        config.population_pairs,
        config.noise,
        config.seed + 1,
    );
    let pairs = Pairs::from_store(&population, false)?;
    progress("pretraining the PAL base");
    let pal = pretrain(HeadKind::Pal, &pairs, &config.pretrain, device).await?;
    progress("pretraining the VPL base");
    let vpl = pretrain(HeadKind::Vpl, &pairs, &config.pretrain, device).await?;
    progress("pretraining the linear prior");
    let prior = pretrain(HeadKind::Linear, &pairs, &config.pretrain, device).await?;
    progress(&format!("the linear prior's rank: {}", prior.config.rank));
    let mut rows = vec![];
    let mut rng = Rng::new(config.seed + 2);
    let max_answered = config.answered.iter().copied().max().unwrap_or(0);
    for kind in UserKind::ALL {
        let mut sums =
            std::collections::BTreeMap::<(&'static str, &'static str, usize), f32>::new();
        for u in 0..config.users {
            let user = User::new(&world, kind, config.noise, &mut rng);
            let case = TestCase::new(&world, user, config.pool, config.held_out_pairs, &mut rng);
            // Linear and MLP heads are asked where a linear head is unsure, the prior's linear
            // head where it is unsure, PAL and VPL where the VPL base is.
            let sequences = [
                ("random", Selection::Random, HEADS.as_slice()),
                ("active", Selection::Linear(&config.fit), &HEADS[..2]),
                (
                    "active",
                    Selection::Prior(&prior, &config.fit),
                    &HEADS[2..3],
                ),
                ("active", Selection::Vpl(&vpl), &HEADS[3..]),
            ];
            for (selection, how, heads) in sequences {
                let asked = ask(&case, max_answered, how, config.samples, &mut rng, device).await?;
                for &n in &config.answered {
                    let mut store = asked.clone();
                    store.records.truncate(n);
                    let pairs = Pairs::from_store(&store, false)?;
                    for &(name, kind_of_head) in heads {
                        let base = match name {
                            "pal" => Some(copy_head(&pal)),
                            "vpl" => Some(copy_head(&vpl)),
                            "linear+prior" => Some(copy_head(&prior)),
                            _ => None,
                        };
                        let settings = HeadSettings {
                            fit: config.fit.clone(),
                            ..HeadSettings::new(kind_of_head)
                        };
                        let head = fit_head(&settings, base, &pairs, device).await?;
                        *sums.entry((name, selection, n)).or_default() +=
                            accuracy(&head, &case, device).await?;
                    }
                }
            }
            progress(&format!("{} user {}/{}", kind.name(), u + 1, config.users));
        }
        for ((head, selection, answered), sum) in sums {
            rows.push(BenchRow {
                kind,
                head,
                selection,
                answered,
                accuracy: sum / config.users as f32,
            });
        }
    }
    Ok(rows)
}

/// A copy of a head (fitting consumes its base; module clones share their tensors).
pub(super) fn copy_head(head: &PersonalHead) -> PersonalHead {
    let model = match &head.model {
        HeadModel::Linear(h) => HeadModel::Linear(h.clone()),
        HeadModel::Mlp(h) => HeadModel::Mlp(h.clone()),
        HeadModel::Pal(h) => HeadModel::Pal(h.clone()),
        HeadModel::Vpl(h) => HeadModel::Vpl(h.clone()),
    };
    PersonalHead {
        config: head.config.clone(),
        model,
    }
}
