//! Fitting heads to answered pairs with the Bradley-Terry loss: a person's own head (linear,
//! MLP, or PAL's mixture weights alone), and the population models (PAL's shared MLP and
//! prototypes, VPL's encoder and reward) that make a few answers go far.
//!
//! Training is full-batch Adam on an autodiff device (flex on the CPU, natively and in the
//! browser), from Tastebud's seeded generator: the same pairs give the same head everywhere.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::heads::{LinearHead, MlpHead, PalHead, features};
use super::prior::PriorMethod;
use super::store::PreferenceStore;
use super::vpl::{Posterior, VplHead, VplModel};
use super::{HeadConfig, HeadKind, HeadModel, PersonalHead};
use crate::noise::Rng;
use crate::{Error, Result, read_f32};

/// Answered pairs as the heads read them: unit embeddings of both images, the target
/// `P(a preferred)`, the prompt's unit embedding when heads read it, and whose answer it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairs {
    pub dimension: usize,
    /// `[n * dimension]` each.
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    /// 1 (a), 0 (b) or 0.5 (tie).
    pub target: Vec<f32>,
    /// `[n * dimension]`, when every pair has its prompt's embedding.
    pub context: Option<Vec<f32>>,
    /// Index into `user_names` per pair.
    pub users: Vec<usize>,
    pub user_names: Vec<String>,
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

impl Pairs {
    pub fn len(&self) -> usize {
        self.target.len()
    }

    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    /// The heads' feature width for these pairs: the embedding, doubled with prompts.
    pub fn input(&self) -> usize {
        self.dimension * if self.context.is_some() { 2 } else { 1 }
    }

    /// The store's pairs (each embedding made unit length). Every record must carry both
    /// embeddings (a front end embeds images first), and with `context` the prompt's too.
    pub fn from_store(store: &PreferenceStore, context: bool) -> Result<Self> {
        let dimension = store.dimension().unwrap_or(0);
        let mut pairs = Self {
            dimension,
            a: vec![],
            b: vec![],
            target: vec![],
            context: context.then(Vec::new),
            users: vec![],
            user_names: vec![],
        };
        for (i, r) in store.records.iter().enumerate() {
            let missing = |what: &str| {
                Error::argument(
                    format!("preference {i}"),
                    format!("has no {what} (embed its images first)"),
                )
            };
            let a =
                r.a.embedding
                    .as_ref()
                    .ok_or_else(|| missing("embedding for a"))?;
            let b =
                r.b.embedding
                    .as_ref()
                    .ok_or_else(|| missing("embedding for b"))?;
            pairs.a.extend(unit(a));
            pairs.b.extend(unit(b));
            pairs.target.push(r.choice.target());
            if let Some(c) = &mut pairs.context {
                let t = r
                    .prompt_embedding
                    .as_ref()
                    .ok_or_else(|| missing("prompt embedding (the head reads the prompt)"))?;
                c.extend(unit(t));
            }
            let name = r.user.clone().unwrap_or_default();
            let user = match pairs.user_names.iter().position(|u| *u == name) {
                Some(u) => u,
                None => {
                    pairs.user_names.push(name);
                    pairs.user_names.len() - 1
                }
            };
            pairs.users.push(user);
        }
        Ok(pairs)
    }

    /// The pairs at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        let d = self.dimension;
        let rows = |v: &[f32]| -> Vec<f32> {
            indices
                .iter()
                .flat_map(|&i| v[i * d..(i + 1) * d].iter().copied())
                .collect()
        };
        Self {
            dimension: d,
            a: rows(&self.a),
            b: rows(&self.b),
            target: indices.iter().map(|&i| self.target[i]).collect(),
            context: self.context.as_deref().map(rows),
            users: indices.iter().map(|&i| self.users[i]).collect(),
            user_names: self.user_names.clone(),
        }
    }

    /// Pairs with a direction (not ties), as (winner, loser) rows.
    fn directed(&self) -> Vec<(usize, bool)> {
        (0..self.len())
            .filter(|&i| self.target[i] != 0.5)
            .map(|i| (i, self.target[i] > 0.5))
            .collect()
    }

    fn matrix(&self, values: &[f32], device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(
                values.to_vec(),
                [values.len() / self.dimension.max(1), self.dimension],
            ),
            device,
        )
    }

    /// `phi` for both sides: `[n, input]` each.
    pub(crate) fn features(&self, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let t = self.context.as_deref().map(|c| self.matrix(c, device));
        (
            features(self.matrix(&self.a, device), t.clone()),
            features(self.matrix(&self.b, device), t),
        )
    }

    pub(crate) fn targets(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(self.target.clone(), [self.len()]), device)
    }
}

/// Bradley-Terry's negative log-likelihood, the mean over pairs of
/// `-(y log sigmoid(ra - rb) + (1 - y) log sigmoid(rb - ra))`.
pub fn bradley_terry_loss(ra: Tensor<1>, rb: Tensor<1>, target: Tensor<1>) -> Tensor<1> {
    let margin = ra - rb;
    let won = log_sigmoid(margin.clone()) * target.clone();
    let lost = log_sigmoid(margin.neg()) * (target.neg() + 1.0);
    (won + lost).neg().mean()
}

/// Fitting settings; `Default` is what `tastebud personalize fit` uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitConfig {
    pub steps: usize,
    pub lr: f64,
    /// L2 penalty `l2 / 2 * ||weights||^2` (the prior that keeps few answers from overfitting).
    pub l2: f32,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            lr: 0.05,
            l2: 1e-3,
            seed: 0,
        }
    }
}

/// Population pretraining settings (linear prior, PAL and VPL).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub hidden: usize,
    /// PAL's `d'`.
    pub output: usize,
    /// PAL's K.
    pub prototypes: usize,
    /// VPL's latent size.
    pub latent: usize,
    /// VPL's KL weight.
    pub kl_weight: f32,
    /// The linear prior's rank (principal directions of people's tastes; with
    /// [`PriorMethod::Auto`], the largest tried).
    pub rank: usize,
    /// How the linear prior is made.
    pub prior: PriorMethod,
    pub seed: u64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            lr: 3e-3,
            hidden: 64,
            output: 16,
            prototypes: 4,
            latent: 8,
            kl_weight: 0.01,
            rank: 16,
            prior: PriorMethod::Auto,
            seed: 0,
        }
    }
}

/// Full-batch Adam on `module` for `steps` steps of `loss`.
pub(crate) fn adam<M: Module>(
    mut module: M,
    steps: usize,
    lr: f64,
    loss: impl Fn(&M, usize) -> Tensor<1>,
) -> M {
    // torch's Adam (burn's default epsilon is 1e-5).
    let mut optimizer = AdamConfig::new().with_epsilon(1e-8).init();
    for step in 0..steps {
        let l = loss(&module, step);
        let grads = GradientsParams::from_grads(l.backward(), &module);
        module = optimizer.step(lr, module, grads);
    }
    module
}

fn squared_norm<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    t.powi_scalar(2).sum()
}

/// What must hold before fitting: enough pairs, not all ties.
fn check(pairs: &Pairs, need: usize, what: &str) -> Result<()> {
    if pairs.len() < need {
        return Err(Error::argument(
            "preferences",
            format!(
                "{} answered pairs; a {what} head needs at least {need} (or fit `pal`/`vpl` \
                 with a pretrained base, which falls back to the population's taste)",
                pairs.len()
            ),
        ));
    }
    if pairs.directed().is_empty() && !pairs.is_empty() {
        return Err(Error::argument(
            "preferences",
            "every answer is a tie: there is no preference to learn",
        ));
    }
    Ok(())
}

/// Fewest pairs a head fitted from scratch needs.
pub const MIN_PAIRS: usize = 2;

/// A person's linear head. `device` must be autodiff.
pub fn fit_linear(pairs: &Pairs, config: &FitConfig, device: &Device) -> Result<LinearHead> {
    check(pairs, MIN_PAIRS, "linear")?;
    let input = pairs.input();
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    Ok(adam(
        LinearHead::new(input, device),
        config.steps,
        config.lr,
        |h, _| {
            bradley_terry_loss(h.forward(fa.clone()), h.forward(fb.clone()), y.clone())
                + squared_norm(h.linear.weight.val()) * (config.l2 / 2.0)
        },
    ))
}

/// A person's MLP head (`hidden` units).
pub fn fit_mlp(
    pairs: &Pairs,
    hidden: usize,
    config: &FitConfig,
    device: &Device,
) -> Result<MlpHead> {
    check(pairs, MIN_PAIRS, "mlp")?;
    let input = pairs.input();
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    let head = MlpHead::new(input, hidden, &mut Rng::new(config.seed), device);
    Ok(adam(head, config.steps, config.lr, |h, _| {
        bradley_terry_loss(h.forward(fa.clone()), h.forward(fb.clone()), y.clone())
            + (squared_norm(h.hidden.weight.val()) + squared_norm(h.out.weight.val()))
                * (config.l2 / 2.0)
    }))
}

/// A person's PAL head: only their K mixture logits move; the base's shared MLP and prototypes
/// stay. No pairs: the base itself (the population's average taste).
pub fn fit_pal(
    base: PalHead,
    pairs: &Pairs,
    config: &FitConfig,
    device: &Device,
) -> Result<PalHead> {
    if pairs.is_empty() {
        return Ok(base);
    }
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    let head = PalHead {
        hidden: base.hidden.no_grad(),
        projection: base.projection.no_grad(),
        prototypes: base.prototypes.set_require_grad(false),
        user_logits: base.user_logits.set_require_grad(true),
    };
    Ok(adam(head, config.steps, config.lr, |h, _| {
        bradley_terry_loss(h.forward(fa.clone()), h.forward(fb.clone()), y.clone())
            + squared_norm(h.user_logits.val()) * (config.l2 / 2.0)
    }))
}

/// PAL's population model: shared MLP, K prototypes and every user's mixture, jointly; the
/// returned base has the uniform mixture (the average user).
pub fn pretrain_pal(pairs: &Pairs, config: &PretrainConfig, device: &Device) -> Result<PalHead> {
    check(pairs, 1, "pal")?;
    let input = pairs.input();
    let mut rng = Rng::new(config.seed);
    let users = pairs.user_names.len();
    let k = config.prototypes.max(1);
    let head = PalHead::new(input, config.hidden, config.output, k, &mut rng, device);
    #[derive(Module, Debug)]
    struct Population {
        head: PalHead,
        logits: burn::module::Param<Tensor<2>>,
    }
    let population = Population {
        head,
        logits: super::heads::param(vec![0.0; users * k], [users, k], device),
    };
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    let who: Vec<i64> = pairs.users.iter().map(|&u| u as i64).collect();
    let who =
        Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(who, [pairs.len()]), device);
    let trained = adam(population, config.steps, config.lr, |p, _| {
        let points = p.head.ideal_points(p.logits.val()).select(0, who.clone());
        let ra = p.head.score_against(fa.clone(), points.clone());
        let rb = p.head.score_against(fb.clone(), points);
        bradley_terry_loss(ra, rb, y.clone())
    });
    Ok(trained.head)
}

/// Users' pairs laid out for VPL: `[users, per_user, dimension]` winners and losers of the
/// directed pairs, a validity mask, and each pair's row in `pairs`.
struct UserBatch {
    winners: Tensor<3>,
    losers: Tensor<3>,
    valid: Vec<f32>,
    per_user: usize,
    users: usize,
}

fn user_batch(pairs: &Pairs, device: &Device) -> UserBatch {
    let d = pairs.dimension;
    let users = pairs.user_names.len().max(1);
    let mut rows: Vec<Vec<(usize, bool)>> = vec![vec![]; users];
    for (i, a_won) in pairs.directed() {
        rows[pairs.users[i]].push((i, a_won));
    }
    let per_user = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut winners = vec![0.0; users * per_user * d];
    let mut losers = winners.clone();
    let mut valid = vec![0.0; users * per_user];
    for (u, list) in rows.iter().enumerate() {
        for (slot, &(i, a_won)) in list.iter().enumerate() {
            let at = (u * per_user + slot) * d;
            let (w, l) = if a_won {
                (&pairs.a, &pairs.b)
            } else {
                (&pairs.b, &pairs.a)
            };
            winners[at..at + d].copy_from_slice(&w[i * d..(i + 1) * d]);
            losers[at..at + d].copy_from_slice(&l[i * d..(i + 1) * d]);
            valid[u * per_user + slot] = 1.0;
        }
    }
    let t3 = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [users, per_user, d]), device);
    UserBatch {
        winners: t3(winners),
        losers: t3(losers),
        valid,
        per_user,
        users,
    }
}

/// A random non-empty subset of each user's valid pairs as context (sizes uniform), so the
/// encoder learns to judge people from few answers as well as many.
fn context_mask(batch: &UserBatch, rng: &mut Rng) -> Vec<f32> {
    let mut mask = vec![0.0; batch.valid.len()];
    for u in 0..batch.users {
        let row = u * batch.per_user..(u + 1) * batch.per_user;
        let valid: Vec<usize> = row.clone().filter(|&i| batch.valid[i] > 0.0).collect();
        if valid.is_empty() {
            continue;
        }
        let keep = 1 + rng.below(valid.len());
        let mut order = valid;
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &i in &order[..keep] {
            mask[i] = 1.0;
        }
    }
    mask
}

/// VPL's population model: encoder and reward, with the reparameterised latent of each user's
/// context and the KL term.
pub fn pretrain_vpl(pairs: &Pairs, config: &PretrainConfig, device: &Device) -> Result<VplModel> {
    check(pairs, 1, "vpl")?;
    let input = pairs.input();
    let mut rng = Rng::new(config.seed);
    let model = VplModel::new(
        pairs.dimension,
        input,
        config.hidden,
        config.latent,
        &mut rng,
        device,
    );
    let batch = user_batch(pairs, device);
    let (fa, fb) = pairs.features(device);
    let y = pairs.targets(device);
    let who: Vec<i64> = pairs.users.iter().map(|&u| u as i64).collect();
    let who =
        Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(who, [pairs.len()]), device);
    let l = config.latent;
    // The random parts of every step, drawn up front (the loss closure cannot borrow `rng`).
    let draws: Vec<(Vec<f32>, Vec<f32>)> = (0..config.steps)
        .map(|_| {
            (
                context_mask(&batch, &mut rng),
                rng.gaussian(batch.users * l),
            )
        })
        .collect();
    Ok(adam(model, config.steps, config.lr, |m, step| {
        let (mask, eps) = &draws[step];
        let mask = Tensor::<2>::from_data(
            TensorData::new(mask.clone(), [batch.users, batch.per_user]),
            device,
        );
        let eps = Tensor::<2>::from_data(TensorData::new(eps.clone(), [batch.users, l]), device);
        let (mean, log_var) = m.encode(batch.winners.clone(), batch.losers.clone(), mask);
        vpl_loss(
            m,
            mean,
            log_var,
            eps,
            &who,
            fa.clone(),
            fb.clone(),
            y.clone(),
            config.kl_weight,
        )
    }))
}

/// Bradley-Terry on every pair with its user's sampled latent, plus `kl_weight` times the mean
/// over users of `KL(N(mean, exp(log_var)) || N(0, I))`.
#[allow(clippy::too_many_arguments)]
pub fn vpl_loss(
    model: &VplModel,
    mean: Tensor<2>,
    log_var: Tensor<2>,
    eps: Tensor<2>,
    who: &Tensor<1, burn::tensor::Int>,
    fa: Tensor<2>,
    fb: Tensor<2>,
    y: Tensor<1>,
    kl_weight: f32,
) -> Tensor<1> {
    let z = mean.clone() + (log_var.clone() * 0.5).exp() * eps;
    let z = z.select(0, who.clone());
    let bt = bradley_terry_loss(model.reward(fa, z.clone()), model.reward(fb, z), y);
    let kl = (mean.powi_scalar(2) + log_var.clone().exp() - log_var - 1.0)
        .sum_dim(1)
        .mean()
        * 0.5;
    bt + kl * kl_weight
}

/// A person's VPL head: their pairs encoded (no training); no answered pair: the prior.
pub async fn fit_vpl(model: VplModel, pairs: &Pairs, device: &Device) -> Result<VplHead> {
    let latent = model.latent();
    let head = VplHead::new(model, device);
    if pairs.directed().is_empty() {
        return Ok(head.with_posterior(&Posterior::prior(latent), device));
    }
    let mut one = pairs.clone();
    one.users = vec![0; one.len()];
    one.user_names = vec![String::new()];
    let batch = user_batch(&one, device);
    let mask = Tensor::<2>::from_data(
        TensorData::new(batch.valid.clone(), [1, batch.per_user]),
        device,
    );
    let (mean, log_var) = head.model.encode(batch.winners, batch.losers, mask);
    let posterior = Posterior {
        mean: read_f32(mean).await?,
        log_var: read_f32(log_var).await?,
    };
    Ok(head.with_posterior(&posterior, device))
}

/// How a head is fitted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadSettings {
    pub kind: HeadKind,
    /// The MLP head's hidden width.
    pub hidden: usize,
    pub fit: FitConfig,
}

impl HeadSettings {
    pub fn new(kind: HeadKind) -> Self {
        Self {
            kind,
            hidden: 32,
            fit: FitConfig::default(),
        }
    }
}

/// A person's head of `settings.kind` from their pairs: linear and MLP from scratch, PAL and
/// VPL on a pretrained `base` (required for them; it must read the same embeddings, and the
/// prompt if the pairs carry it). `device` must be autodiff.
pub async fn fit_head(
    settings: &HeadSettings,
    base: Option<PersonalHead>,
    pairs: &Pairs,
    device: &Device,
) -> Result<PersonalHead> {
    let kind = settings.kind;
    let mut config = HeadConfig::new(kind, pairs.dimension, pairs.context.is_some());
    config.pairs = pairs.len();
    let base = match (kind, base) {
        (HeadKind::Mlp, Some(_)) => {
            return Err(Error::argument(
                "base",
                "an mlp head is fitted from scratch: it takes no base",
            ));
        }
        (HeadKind::Pal | HeadKind::Vpl, None) => {
            return Err(Error::argument(
                "base",
                format!(
                    "a {} head needs a population base (`tastebud personalize pretrain --head {}`)",
                    kind.name(),
                    kind.name()
                ),
            ));
        }
        (_, Some(base)) if base.config.kind != kind => {
            return Err(Error::argument(
                "base",
                format!("is a {} head, not {}", base.config.kind.name(), kind.name()),
            ));
        }
        (_, base) => base,
    };
    if let Some(base) = &base {
        if !pairs.is_empty()
            && (base.config.dimension != pairs.dimension
                || base.config.context != pairs.context.is_some())
        {
            return Err(Error::argument(
                "preferences",
                format!(
                    "embeddings of dimension {}{}; the base reads {}{}",
                    pairs.dimension,
                    if pairs.context.is_some() {
                        " with prompts"
                    } else {
                        ""
                    },
                    base.config.dimension,
                    if base.config.context {
                        " with prompts"
                    } else {
                        ""
                    },
                ),
            ));
        }
        config = HeadConfig {
            pairs: pairs.len(),
            ..base.config.clone()
        };
    }
    let model = match (kind, base.map(|b| b.model)) {
        (HeadKind::Linear, Some(HeadModel::Linear(base))) => HeadModel::Linear(
            super::prior::fit_with_prior(&base, pairs, &settings.fit, device)?,
        ),
        (HeadKind::Linear, _) => {
            config.l2 = Some(settings.fit.l2);
            HeadModel::Linear(fit_linear(pairs, &settings.fit, device)?)
        }
        (HeadKind::Mlp, _) => {
            config.l2 = Some(settings.fit.l2);
            config.hidden = settings.hidden;
            HeadModel::Mlp(fit_mlp(pairs, settings.hidden, &settings.fit, device)?)
        }
        (HeadKind::Pal, Some(HeadModel::Pal(base))) => {
            HeadModel::Pal(fit_pal(base, pairs, &settings.fit, device)?)
        }
        (HeadKind::Vpl, Some(HeadModel::Vpl(base))) => {
            HeadModel::Vpl(fit_vpl(base.model, pairs, device).await?)
        }
        _ => return Err(Error::argument("base", "its weights do not match its kind")),
    };
    Ok(PersonalHead {
        config,
        model: model.frozen(),
    })
}

/// A population base of `kind` (linear prior, PAL or VPL) from many people's pairs (`user` set
/// per record).
pub async fn pretrain(
    kind: HeadKind,
    pairs: &Pairs,
    config: &PretrainConfig,
    device: &Device,
) -> Result<PersonalHead> {
    let mut head = HeadConfig::new(kind, pairs.dimension, pairs.context.is_some());
    head.hidden = config.hidden;
    let model = match kind {
        HeadKind::Linear => {
            let (base, _, rank) = super::prior::pretrain_linear(
                pairs,
                config.rank,
                config.prior,
                &FitConfig::default(),
                device,
            )
            .await?;
            head.hidden = 0;
            head.rank = rank;
            HeadModel::Linear(base)
        }
        HeadKind::Pal => {
            head.output = config.output;
            head.prototypes = config.prototypes.max(1);
            HeadModel::Pal(pretrain_pal(pairs, config, device)?)
        }
        HeadKind::Vpl => {
            head.latent = config.latent;
            HeadModel::Vpl(VplHead::new(pretrain_vpl(pairs, config, device)?, device))
        }
        other => {
            return Err(Error::argument(
                "head",
                format!(
                    "{} heads are fitted per person: only linear, pal and vpl are pretrained",
                    other.name()
                ),
            ));
        }
    };
    Ok(PersonalHead {
        config: head,
        model: model.frozen(),
    })
}
