//! Personal heads against their PyTorch reference (tests/reference/make_personal_fixtures.py):
//! the preference file written by Python, every head fitted from the same start (linear with and
//! without the prompt, MLP, PAL pretraining and a person's mixture, VPL pretraining, a person's
//! posterior and the BALD pick), head files that round-trip, and bad input.

mod common;

use common::*;
use pollster::block_on;
use serde_json::Value;
use tastebud_core::ComputeDevice;
use tastebud_core::burn::tensor::Device;
use tastebud_core::personal::active::{PairChoice, choose_next};
use tastebud_core::personal::fit::{
    FitConfig, HeadSettings, Pairs, PretrainConfig, fit_head, fit_linear, pretrain,
};
use tastebud_core::personal::heads::features;
use tastebud_core::personal::prior::PriorMethod;
use tastebud_core::personal::prior_bench::{PriorBenchConfig, prior_bench};
use tastebud_core::personal::store::{Limits, PreferenceStore};
use tastebud_core::personal::{HeadConfig, HeadKind, HeadModel, PersonalHead, unit_rows};
use tastebud_core::{Error, ModelFiles};

const REFERENCE: &str = "personal/reference.safetensors";

fn reference(name: &str) -> Vec<f32> {
    reference_tensor_in(REFERENCE, name).0
}

fn settings() -> Value {
    let bytes = std::fs::read(fixtures().join("personal/reference.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn store() -> PreferenceStore {
    let bytes = std::fs::read(fixtures().join("personal/pairs.json")).unwrap();
    PreferenceStore::from_json("pairs.json", &bytes, &Limits::default()).unwrap()
}

fn person(u: usize) -> PreferenceStore {
    let mut s = store();
    s.records
        .retain(|r| r.user.as_deref() == Some(&format!("person-{u}")));
    s
}

/// A head's weights file with its metadata replaced (`None`: as heads were saved before
/// 2026-12-01, without their config inside).
fn with_metadata(
    weights: &[u8],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(weights).unwrap();
    let tensors: Vec<_> = st.tensors();
    safetensors::serialize(tensors, metadata).unwrap()
}

fn device() -> Device {
    ComputeDevice::cpu().device.autodiff()
}

fn fit_config() -> FitConfig {
    let f = &settings()["fit"];
    FitConfig {
        steps: f["steps"].as_u64().unwrap() as usize,
        lr: f["lr"].as_f64().unwrap(),
        l2: f["l2"].as_f64().unwrap() as f32,
        seed: 0,
    }
}

fn pretrain_config() -> PretrainConfig {
    let p = &settings()["pretrain"];
    let n = |k: &str| p[k].as_u64().unwrap() as usize;
    PretrainConfig {
        steps: n("steps"),
        lr: p["lr"].as_f64().unwrap(),
        hidden: n("hidden"),
        output: n("output"),
        prototypes: n("prototypes"),
        latent: n("latent"),
        kl_weight: p["kl_weight"].as_f64().unwrap() as f32,
        rank: n("rank"),
        seed: p["seed"].as_u64().unwrap(),
        prior: PriorMethod::Auto,
    }
}

fn probes() -> Vec<Vec<f32>> {
    reference("probes").chunks(8).map(<[f32]>::to_vec).collect()
}

fn scores(head: &PersonalHead, context: bool) -> Vec<f32> {
    let prompt = reference("probe_prompt");
    block_on(head.score_vectors(&probes(), context.then_some(prompt.as_slice()), &device()))
        .unwrap()
}

fn settings_for(kind: HeadKind) -> HeadSettings {
    HeadSettings {
        hidden: settings()["mlp"]["hidden"].as_u64().unwrap() as usize,
        fit: FitConfig {
            seed: settings()["mlp"]["seed"].as_u64().unwrap(),
            ..fit_config()
        },
        ..HeadSettings::new(kind)
    }
}

#[test]
fn preference_file_from_python_reads_and_round_trips() {
    let s = store();
    let summary = s.summary();
    assert_eq!(summary.records, 30);
    assert_eq!(summary.ties, 1);
    assert_eq!(summary.users, 3);
    assert_eq!(summary.with_embeddings, 30);
    assert_eq!(summary.dimension, Some(8));
    assert_eq!(summary.contradictions, 0);
    assert_eq!(s.embedding_model.as_deref(), Some("random-8d"));
    let again =
        PreferenceStore::from_json("again", &s.to_json().unwrap(), &Limits::default()).unwrap();
    assert_eq!(again, s);
}

#[test]
fn linear_heads_match_torch() {
    for (name, context) in [("linear", false), ("linear_ctx", true)] {
        let pairs = Pairs::from_store(&person(0), context).unwrap();
        let head = fit_linear(&pairs, &fit_config(), &device()).unwrap();
        assert_close(
            &format!("{name} weight"),
            &read(head.linear.weight.val()),
            &reference(&format!("{name}.weight")),
            1e-4,
        );
        let head = block_on(fit_head(
            &HeadSettings {
                fit: fit_config(),
                ..HeadSettings::new(HeadKind::Linear)
            },
            None,
            &pairs,
            &device(),
        ))
        .unwrap();
        assert_eq!(head.config.context, context);
        assert_eq!(head.config.pairs, 10);
        assert_close(
            &format!("{name} scores"),
            &scores(&head, context),
            &reference(&format!("{name}.scores")),
            1e-4,
        );
    }
}

#[test]
fn mlp_head_matches_torch() {
    let pairs = Pairs::from_store(&person(0), false).unwrap();
    let head = block_on(fit_head(
        &settings_for(HeadKind::Mlp),
        None,
        &pairs,
        &device(),
    ))
    .unwrap();
    assert_close(
        "mlp scores",
        &scores(&head, false),
        &reference("mlp.scores"),
        1e-4,
    );
}

#[test]
fn pal_pretraining_and_person_fit_match_torch() {
    let all = Pairs::from_store(&store(), false).unwrap();
    let base = block_on(pretrain(HeadKind::Pal, &all, &pretrain_config(), &device())).unwrap();
    assert_eq!((base.config.prototypes, base.config.output), (2, 4));
    assert_close(
        "pal base scores",
        &scores(&base, false),
        &reference("pal_base.scores"),
        1e-4,
    );
    let pairs = Pairs::from_store(&person(1), false).unwrap();
    let head = block_on(fit_head(
        &settings_for(HeadKind::Pal),
        Some(base),
        &pairs,
        &device(),
    ))
    .unwrap();
    let HeadModel::Pal(pal) = &head.model else {
        panic!("pal")
    };
    assert_close(
        "pal user logits",
        &read(pal.user_logits.val()),
        &reference("pal_user.user_logits"),
        1e-4,
    );
    assert_close(
        "pal user scores",
        &scores(&head, false),
        &reference("pal_user.scores"),
        1e-4,
    );
}

#[test]
fn vpl_pretraining_posterior_and_bald_match_torch() {
    let all = Pairs::from_store(&store(), false).unwrap();
    let base = block_on(pretrain(HeadKind::Vpl, &all, &pretrain_config(), &device())).unwrap();
    assert_close(
        "vpl base scores",
        &scores(&base, false),
        &reference("vpl_base.scores"),
        1e-4,
    );
    let pairs = Pairs::from_store(&person(2), false).unwrap();
    let head = block_on(fit_head(
        &settings_for(HeadKind::Vpl),
        Some(base),
        &pairs,
        &device(),
    ))
    .unwrap();
    let HeadModel::Vpl(vpl) = &head.model else {
        panic!("vpl")
    };
    let posterior = block_on(vpl.posterior()).unwrap();
    assert_close(
        "vpl mean",
        &posterior.mean,
        &reference("vpl_user.user_mean"),
        1e-4,
    );
    assert_close(
        "vpl log var",
        &posterior.log_var,
        &reference("vpl_user.user_log_var"),
        1e-4,
    );
    assert_close(
        "vpl user scores",
        &scores(&head, false),
        &reference("vpl_user.scores"),
        1e-4,
    );

    let b = &settings()["bald"];
    let phi = features(
        unit_rows(probes().iter().map(Vec::as_slice), 6, 8, &device()),
        None,
    );
    let choice = block_on(vpl.choose_pair(
        phi,
        &[],
        b["samples"].as_u64().unwrap() as usize,
        b["seed"].as_u64().unwrap(),
    ))
    .unwrap()
    .unwrap();
    let want = &b["choice"];
    assert_eq!(
        (choice.first, choice.second),
        (
            want[0].as_u64().unwrap() as usize,
            want[1].as_u64().unwrap() as usize
        )
    );
    assert_close(
        "bald information",
        &[choice.information],
        &[want[2].as_f64().unwrap() as f32],
        1e-3,
    );
    assert_close(
        "bald p",
        &[choice.p_first],
        &[want[3].as_f64().unwrap() as f32],
        1e-4,
    );
}

/// The linear head's Laplace posterior picks the pair PyTorch's explicit inverse picks.
#[test]
fn linear_laplace_bald_matches_torch() {
    let pairs = Pairs::from_store(&person(0), false).unwrap();
    let linear = HeadSettings {
        fit: fit_config(),
        ..HeadSettings::new(HeadKind::Linear)
    };
    let head = block_on(fit_head(&linear, None, &pairs, &device())).unwrap();
    // The l2 the head was fitted with, from its config.
    let choice = assert_bald_pick(&head, &pairs, "laplace_choice");
    // Asked pairs are skipped; an MLP head has no posterior to ask by.
    let again = block_on(choose_next(
        &head,
        &pairs,
        &probes(),
        None,
        &[(choice.second, choice.first)],
        Some(1e-3),
        16,
        7,
        &device(),
    ))
    .unwrap()
    .unwrap();
    assert_ne!((again.first, again.second), (choice.first, choice.second));
    // A head fitted with another l2 keeps it (head.json) and asks by it unless told otherwise.
    let mut strong = linear.clone();
    strong.fit.l2 = 0.5;
    let head = block_on(fit_head(&strong, None, &pairs, &device())).unwrap();
    assert_eq!(head.config.l2, Some(0.5));
    let information = |l2: Option<f32>| {
        block_on(choose_next(
            &head,
            &pairs,
            &probes(),
            None,
            &[],
            l2,
            16,
            7,
            &device(),
        ))
        .unwrap()
        .unwrap()
        .information
    };
    assert_eq!(information(None), information(Some(0.5)));
    assert_ne!(information(None), information(Some(1e-3)));
    let mlp = block_on(fit_head(
        &settings_for(HeadKind::Mlp),
        None,
        &pairs,
        &device(),
    ))
    .unwrap();
    let err = block_on(choose_next(
        &mlp,
        &pairs,
        &probes(),
        None,
        &[],
        Some(1e-3),
        16,
        7,
        &device(),
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("no uncertainty to ask by"),
        "{err}"
    );
}

/// The population prior recovers tastes a population shares: on people who each mix one or two
/// of four hidden directions, the prior chosen on held-out people is the joint fit at the number
/// of directions, and a new person's head on it after 20 random answers is close to an oracle
/// that knows the directions, and well ahead of the prior taken from people's heads fitted one
/// by one.
#[test]
fn population_prior_recovers_shared_tastes() {
    let config = PriorBenchConfig {
        dimension: 256,
        attributes: 128,
        tastes: 4,
        population: 120,
        population_pairs: 40,
        users: 8,
        answered: vec![20],
        rank: 8,
        ..PriorBenchConfig::default()
    };
    let report = block_on(prior_bench(&config, &device(), &mut |_| {})).unwrap();
    let accuracy = |head: &str| {
        report
            .rows
            .iter()
            .find(|r| r.head == head)
            .map(|r| r.accuracy)
            .unwrap()
    };
    eprintln!("{report:?}");
    assert_eq!(
        (report.method, report.rank),
        (PriorMethod::Joint, 4),
        "{report:?}"
    );
    assert!(
        accuracy("linear+prior") > accuracy("oracle") - 0.05,
        "{report:?}"
    );
    assert!(
        accuracy("linear+prior") > accuracy("linear+prior-one-by-one") + 0.02,
        "{report:?}"
    );
    assert!(
        accuracy("linear+prior") > accuracy("linear") + 0.1,
        "{report:?}"
    );
}

/// The population prior over linear heads (mean, principal directions, residual scale) and a
/// person's MAP head under it, against PyTorch; with no answers, the population's taste.
#[test]
fn linear_prior_and_person_fit_match_torch() {
    let all = Pairs::from_store(&store(), false).unwrap();
    let base = block_on(pretrain(
        HeadKind::Linear,
        &all,
        &pretrain_config(),
        &device(),
    ))
    .unwrap();
    assert_eq!(base.config.rank, 1);
    let HeadModel::Linear(linear) = &base.model else {
        panic!("a linear base")
    };
    let prior = linear.prior.as_ref().expect("a prior");
    assert_close(
        "prior mean",
        &read(linear.linear.weight.val()),
        &reference("linear_prior.weight"),
        1e-4,
    );
    let u = read(prior.factors.val());
    let outer: Vec<f32> = u
        .iter()
        .flat_map(|a| u.iter().map(move |b| a * b))
        .collect();
    assert_close(
        "U U^T",
        &outer,
        &reference("linear_prior.factors_outer"),
        1e-4,
    );
    assert_close(
        "scale",
        &read(prior.scale.val()),
        &reference("linear_prior.scale"),
        1e-4,
    );
    assert_close(
        "base scores",
        &scores(&base, false),
        &reference("linear_prior.scores"),
        1e-4,
    );
    // `--prior joint`: the mean and directions refitted on everyone's answers at once.
    let joint = block_on(pretrain(
        HeadKind::Linear,
        &all,
        &PretrainConfig {
            prior: PriorMethod::Joint,
            ..pretrain_config()
        },
        &device(),
    ))
    .unwrap();
    let HeadModel::Linear(joint) = &joint.model else {
        panic!("a linear base")
    };
    assert_close(
        "joint prior mean",
        &read(joint.linear.weight.val()),
        &reference("linear_prior_joint.weight"),
        1e-4,
    );
    let u = read(joint.prior.as_ref().expect("a prior").factors.val());
    let outer: Vec<f32> = u
        .iter()
        .flat_map(|a| u.iter().map(move |b| a * b))
        .collect();
    assert_close(
        "joint U U^T",
        &outer,
        &reference("linear_prior_joint.factors_outer"),
        1e-4,
    );
    let linear_settings = HeadSettings {
        fit: fit_config(),
        ..HeadSettings::new(HeadKind::Linear)
    };
    let none = Pairs::from_store(&PreferenceStore::default(), false).unwrap();
    let nobody = block_on(fit_head(
        &linear_settings,
        Some(copy(&base)),
        &none,
        &device(),
    ))
    .unwrap();
    assert_close(
        "no answers: the population's taste",
        &scores(&nobody, false),
        &reference("linear_prior.scores"),
        1e-6,
    );
    let mine = Pairs::from_store(&person(1), false).unwrap();
    let fitted = block_on(fit_head(&linear_settings, Some(base), &mine, &device())).unwrap();
    assert_eq!((fitted.config.rank, fitted.config.l2), (1, None));
    assert_close(
        "person under the prior",
        &scores(&fitted, false),
        &reference("linear_prior_user.scores"),
        1e-4,
    );
    // The next pair by its Laplace posterior over the prior's coordinates.
    assert_bald_pick(&fitted, &mine, "laplace_prior_choice");
    // A person's head carries the prior, not their last fit, as the base for a refit.
    let refitted = block_on(fit_head(
        &linear_settings,
        Some(copy(&fitted)),
        &mine,
        &device(),
    ))
    .unwrap();
    assert_close(
        "refit from a person's head",
        &scores(&refitted, false),
        &scores(&fitted, false),
        1e-6,
    );
    // One person is no population; a prior on a non-linear head is refused by name.
    let one = Pairs::from_store(&person(0), false).unwrap();
    let err = block_on(pretrain(
        HeadKind::Linear,
        &one,
        &pretrain_config(),
        &device(),
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("a linear prior needs two or more"), "{err}");
    let config = serde_json::json!({"format": "tastebud-head", "version": 1, "kind": "mlp",
        "dimension": 8, "context": false, "hidden": 6, "rank": 2});
    let mut files = ModelFiles::new("head");
    files.insert("head.json", serde_json::to_vec(&config).unwrap());
    files.insert(
        "head.safetensors",
        with_metadata(&fitted.to_files().unwrap().1, None),
    );
    let err = PersonalHead::from_files(&mut files, &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("head/head.json") && err.contains("`rank`"),
        "{err}"
    );
    // A linear head without a prior is no base; an MLP takes none.
    let plain = block_on(fit_head(&linear_settings, None, &mine, &device())).unwrap();
    let err = block_on(fit_head(&linear_settings, Some(plain), &mine, &device()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no population prior"), "{err}");
    let err = block_on(fit_head(
        &settings_for(HeadKind::Mlp),
        Some(fitted),
        &mine,
        &device(),
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("takes no base"), "{err}");
}

/// The pair BALD picks among the probes by `head`'s posterior equals the reference's `key`
/// (pair, information, p) in reference.json.
fn assert_bald_pick(head: &PersonalHead, pairs: &Pairs, key: &str) -> PairChoice {
    let b = &settings()["bald"];
    let choice = block_on(choose_next(
        head,
        pairs,
        &probes(),
        None,
        &[],
        None,
        b["samples"].as_u64().unwrap() as usize,
        b["seed"].as_u64().unwrap(),
        &device(),
    ))
    .unwrap()
    .unwrap();
    let want = &settings()[key];
    let index = |i: usize| want[i].as_u64().unwrap() as usize;
    assert_eq!((choice.first, choice.second), (index(0), index(1)), "{key}");
    assert_close(
        &format!("{key}: information and p"),
        &[choice.information, choice.p_first],
        &[
            want[2].as_f64().unwrap() as f32,
            want[3].as_f64().unwrap() as f32,
        ],
        1e-4,
    );
    choice
}

/// A head's copy through its files (fitting consumes its base).
fn copy(head: &PersonalHead) -> PersonalHead {
    let (json, weights) = head.to_files().unwrap();
    let mut files = ModelFiles::new("head");
    files.insert("head.json", json);
    files.insert("head.safetensors", weights);
    PersonalHead::from_files(&mut files, &device()).unwrap()
}

#[test]
fn head_files_round_trip() {
    let all = Pairs::from_store(&store(), false).unwrap();
    let heads = vec![
        block_on(fit_head(
            &settings_for(HeadKind::Linear),
            None,
            &Pairs::from_store(&person(0), true).unwrap(),
            &device(),
        ))
        .unwrap(),
        block_on(fit_head(
            &settings_for(HeadKind::Mlp),
            None,
            &all,
            &device(),
        ))
        .unwrap(),
        block_on(pretrain(HeadKind::Pal, &all, &pretrain_config(), &device())).unwrap(),
        block_on(pretrain(HeadKind::Vpl, &all, &pretrain_config(), &device())).unwrap(),
        block_on(pretrain(
            HeadKind::Linear,
            &all,
            &pretrain_config(),
            &device(),
        ))
        .unwrap(),
    ];
    for head in heads {
        // A fitted head only scores: trainable weights would record a graph on the autodiff
        // device at every scoring pass that no backward pass frees (the bench grew to 7 GiB).
        assert_eq!(
            weights_requiring_grad(&head),
            0,
            "{} head",
            head.config.kind.name()
        );
        let (json, weights) = head.to_files().unwrap();
        let mut files = ModelFiles::new("head");
        files.insert("head.json", json);
        files.insert("head.safetensors", weights);
        let loaded = PersonalHead::from_files(&mut files, &device()).unwrap();
        assert_eq!(loaded.config, head.config);
        // The L2 of a head fitted from scratch (a prior replaces it).
        let fitted_here =
            matches!(head.config.kind, HeadKind::Linear | HeadKind::Mlp) && head.config.rank == 0;
        assert_eq!(head.config.l2.is_some(), fitted_here);
        let context = head.config.context;
        assert_close(
            head.config.kind.name(),
            &scores(&loaded, context),
            &scores(&head, context),
            1e-6,
        );
    }
}

/// How many of a head's weights (those a fit trains, and a shared one) still require grad.
fn weights_requiring_grad(head: &PersonalHead) -> usize {
    let flags = match &head.model {
        HeadModel::Linear(h) => {
            let mut flags = vec![h.linear.weight.val().is_require_grad()];
            if let Some(p) = &h.prior {
                flags.push(p.factors.val().is_require_grad());
                flags.push(p.scale.val().is_require_grad());
            }
            flags
        }
        HeadModel::Mlp(h) => vec![
            h.hidden.weight.val().is_require_grad(),
            h.out.weight.val().is_require_grad(),
        ],
        HeadModel::Pal(h) => vec![
            h.hidden.weight.val().is_require_grad(),
            h.prototypes.val().is_require_grad(),
            h.user_logits.val().is_require_grad(),
        ],
        HeadModel::Vpl(h) => vec![
            h.model.reward_out.weight.val().is_require_grad(),
            h.user_mean.val().is_require_grad(),
        ],
    };
    flags.into_iter().filter(|&f| f).count()
}

fn load_err(json: &str) -> String {
    match PreferenceStore::from_json("prefs.json", json.as_bytes(), &Limits::default()) {
        Ok(_) => panic!("{json} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_preference_files_are_refused_by_name() {
    let record = |a: &str| {
        format!(
            r#"{{"format":"tastebud-preferences","version":1,"records":[{{"prompt":"p","a":{a},"b":{{"embedding":[1,0]}},"choice":"a","timestamp":1}}]}}"#
        )
    };
    let cases = [
        ("not json", "not a preference file"),
        (
            r#"{"format":"other","version":1,"records":[]}"#,
            "expected \"tastebud-preferences\"",
        ),
        (
            r#"{"format":"tastebud-preferences","version":7,"records":[]}"#,
            "newer Tastebud",
        ),
        (
            &record(r#"{"embedding":[1,0,0]}"#),
            "records[0].b.embedding: dimension 2",
        ),
        (
            &record(r#"{}"#),
            "records[0].a: needs an `image` or an `embedding`",
        ),
        (&record(r#"{"embedding":[1e999,0]}"#), ""),
        (
            &record(r#"{"embedding":[1,0],"colour":"red"}"#),
            "unknown field `colour`",
        ),
    ];
    for (json, expected) in cases {
        let err = load_err(json);
        assert!(
            err.contains("prefs.json") && err.contains(expected),
            "{json}: {err}"
        );
    }
    let limits = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    let big = std::fs::read(fixtures().join("personal/pairs.json")).unwrap();
    let err = PreferenceStore::from_json("big.json", &big, &limits).unwrap_err();
    assert!(err.to_string().contains("over the 100 byte limit"), "{err}");
}

#[test]
fn failed_import_changes_nothing() {
    let mut s = person(0);
    let before = s.clone();
    let mut other = person(1);
    other.embedding_model = Some("another-clip".into());
    let err = s.import(other).unwrap_err();
    assert!(err.to_string().contains("another-clip"), "{err}");
    assert_eq!(s, before);
    let mut wrong = person(1);
    for r in &mut wrong.records {
        r.a.embedding = Some(vec![1.0; 4]);
        r.b.embedding = Some(vec![1.0; 4]);
        r.prompt_embedding = None;
    }
    wrong.embedding_model = None;
    assert!(s.import(wrong).is_err());
    assert_eq!(s, before);
    // Importing the same records twice adds them once.
    assert_eq!(s.import(person(1)).unwrap(), 10);
    assert_eq!(s.import(person(1)).unwrap(), 0);
    assert_eq!(s.records.len(), 20);
}

#[test]
fn too_few_pairs_ties_and_wrong_dimensions_are_explained() {
    let mut one = person(0);
    one.records.truncate(1);
    let pairs = Pairs::from_store(&one, false).unwrap();
    let err = block_on(fit_head(
        &settings_for(HeadKind::Linear),
        None,
        &pairs,
        &device(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("needs at least 2"), "{err}");

    let mut ties = person(0);
    ties.records
        .iter_mut()
        .for_each(|r| r.choice = tastebud_core::personal::store::Choice::Tie);
    let err = block_on(fit_head(
        &settings_for(HeadKind::Linear),
        None,
        &Pairs::from_store(&ties, false).unwrap(),
        &device(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("every answer is a tie"), "{err}");

    // PAL and VPL need a base; with no answers they fall back to it.
    let all = Pairs::from_store(&store(), false).unwrap();
    let err = block_on(fit_head(
        &settings_for(HeadKind::Pal),
        None,
        &all,
        &device(),
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("personalize pretrain --head pal"),
        "{err}"
    );
    let base = block_on(pretrain(HeadKind::Vpl, &all, &pretrain_config(), &device())).unwrap();
    let base_scores = scores(&base, false);
    let empty = Pairs::from_store(&PreferenceStore::default(), false).unwrap();
    let prior = block_on(fit_head(
        &settings_for(HeadKind::Vpl),
        Some(base),
        &empty,
        &device(),
    ))
    .unwrap();
    assert_close("prior", &scores(&prior, false), &base_scores, 1e-6);

    // Embeddings of another dimension than the head's.
    let head = block_on(fit_head(
        &settings_for(HeadKind::Linear),
        None,
        &Pairs::from_store(&person(0), false).unwrap(),
        &device(),
    ))
    .unwrap();
    let err = block_on(head.score_vectors(&[vec![1.0; 5]], None, &device())).unwrap_err();
    assert!(
        matches!(err, Error::BadArgument { .. }) && err.to_string().contains("this head reads 8"),
        "{err}"
    );
    let base = block_on(pretrain(HeadKind::Pal, &all, &pretrain_config(), &device())).unwrap();
    let mut wide = person(0);
    for r in &mut wide.records {
        r.a.embedding = Some(vec![0.5; 9]);
        r.b.embedding = Some(vec![0.25; 9]);
        r.prompt_embedding = None;
    }
    let err = block_on(fit_head(
        &settings_for(HeadKind::Pal),
        Some(base),
        &Pairs::from_store(&wide, false).unwrap(),
        &device(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("dimension 9"), "{err}");
}

#[test]
fn corrupt_head_files_are_named() {
    let mut config = HeadConfig::new(HeadKind::Linear, 8, false);
    let head = block_on(fit_head(
        &settings_for(HeadKind::Linear),
        None,
        &Pairs::from_store(&person(0), false).unwrap(),
        &device(),
    ))
    .unwrap();
    let (_, saved) = head.to_files().unwrap();
    config.dimension = 9;
    // The weights file carries its own config, which wins over a head.json that does not
    // belong to it (a save cut between the two files).
    let mut files = ModelFiles::new("head");
    files.insert("head.json", serde_json::to_vec(&config).unwrap());
    files.insert("head.safetensors", saved.clone());
    let loaded = PersonalHead::from_files(&mut files, &device()).unwrap();
    assert_eq!(loaded.config, head.config);
    // A bad config inside the weights file is named as such.
    let mut bad_inside = serde_json::to_value(&head.config).unwrap();
    bad_inside["l2"] = serde_json::json!(-1.0);
    let metadata = [("tastebud.head".to_string(), bad_inside.to_string())].into();
    let mut files = ModelFiles::new("head");
    files.insert("head.safetensors", with_metadata(&saved, Some(metadata)));
    let err = PersonalHead::from_files(&mut files, &device()).unwrap_err();
    assert!(
        err.to_string()
            .contains("head/head.safetensors (metadata tastebud.head)")
            && err.to_string().contains("`l2`"),
        "{err}"
    );
    // Weights saved without their config are checked against head.json.
    let weights = with_metadata(&saved, None);
    let mut files = ModelFiles::new("head");
    files.insert("head.json", serde_json::to_vec(&config).unwrap());
    files.insert("head.safetensors", weights.clone());
    let err = PersonalHead::from_files(&mut files, &device()).unwrap_err();
    assert!(
        err.to_string().contains("head/head.safetensors")
            && err.to_string().contains("linear.weight"),
        "{err}"
    );
    let mut files = ModelFiles::new("head");
    files.insert("head.json", b"{\"format\":\"tastebud-head\"}".to_vec());
    files.insert("head.safetensors", weights.clone());
    let err = PersonalHead::from_files(&mut files, &device()).unwrap_err();
    assert!(err.to_string().contains("head/head.json"), "{err}");
    let mut bad_l2 = serde_json::to_value(&head.config).unwrap();
    bad_l2["l2"] = serde_json::json!(-1.0);
    let mut files = ModelFiles::new("head");
    files.insert("head.json", serde_json::to_vec(&bad_l2).unwrap());
    files.insert("head.safetensors", weights);
    let err = PersonalHead::from_files(&mut files, &device()).unwrap_err();
    assert!(
        err.to_string().contains("head/head.json") && err.to_string().contains("`l2`"),
        "{err}"
    );
}

/// A linear head fitted to a simulated person's answers about tiny SD-Turbo images, used as the
/// reward in ReNO, raises that person's hidden utility (a direction in the CLIP embedding
/// space the head never sees).
#[test]
fn a_fitted_head_steers_reno_toward_the_hidden_taste() {
    use tastebud_core::noise::{Noise, Rng};
    use tastebud_core::pipeline::{Pipeline, Request};
    use tastebud_core::reno::{Flow, NoiseObjective, RenoConfig, reno};
    use tastebud_core::rewards::clip_reward::load_clip;
    use tastebud_core::rewards::personal::{PersonalReward, embed_images};
    use tastebud_core::rewards::{RewardSet, RewardTerm};

    const PROMPT: &str = "a photo of a cat";
    let device = device();
    let pipeline = Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &device).unwrap();
    let clip = load_clip(model_files("clip-openai"), None, &device).unwrap();
    let embed = |noise: Noise| -> Vec<f32> {
        let request = Request {
            prompt: PROMPT.into(),
            noise: Some(noise),
            seed: 0,
            steps: 1,
            height: Some(48),
            width: Some(40),
        };
        let image = block_on(pipeline.generate(&request)).unwrap();
        let rgb = image::RgbImage::from_raw(40, 48, image.pixels).unwrap();
        let file = tastebud_core::preprocess::ImageFile::from_rgb(&rgb);
        block_on(embed_images(&clip, &[file])).unwrap().remove(0)
    };
    let shape = [1, 4, 6, 5];
    let images: Vec<Vec<f32>> = (0..24)
        .map(|s| embed(Noise::from_seed(s, &shape)))
        .collect();
    let mut rng = Rng::new(11);
    let taste: Vec<f32> = {
        let t = rng.gaussian(16);
        let n = t.iter().map(|v| v * v).sum::<f32>().sqrt();
        t.iter().map(|v| v / n).collect()
    };
    let utility = |e: &[f32]| e.iter().zip(&taste).map(|(a, b)| a * b).sum::<f32>();

    let mut answers = PreferenceStore::default();
    for _ in 0..40 {
        let (i, j) = (rng.below(24), rng.below(24));
        if i == j {
            continue;
        }
        let choice = if utility(&images[i]) > utility(&images[j]) {
            tastebud_core::personal::store::Choice::A
        } else {
            tastebud_core::personal::store::Choice::B
        };
        answers
            .records
            .push(tastebud_core::personal::simulate::record(
                &images[i], &images[j], choice, None,
            ));
    }
    let pairs = Pairs::from_store(&answers, false).unwrap();
    let head = block_on(fit_head(
        &HeadSettings::new(HeadKind::Linear),
        None,
        &pairs,
        &device,
    ))
    .unwrap();

    let reward = PersonalReward {
        clip: load_clip(model_files("clip-openai"), None, &device).unwrap(),
        head,
    };
    let mut set = RewardSet::new(vec![RewardTerm {
        label: "personal".into(),
        reward: Box::new(reward),
        weight: 1.0,
    }])
    .unwrap();
    let objective = NoiseObjective::new(&pipeline, &mut set, PROMPT, &shape, 1, 0).unwrap();
    let start = Noise::from_seed(100, &shape);
    let config = RenoConfig {
        iterations: 15,
        ..RenoConfig::default()
    };
    let out = block_on(reno(&objective, start.clone(), &config, &mut |_, _| {
        Flow::Continue
    }))
    .unwrap();
    let t = &out.trajectory;
    assert!(
        t[out.best_iteration].rewards[0] > t[0].rewards[0],
        "the head's own score rises"
    );
    let spread = {
        let u: Vec<f32> = images.iter().map(|e| utility(e)).collect();
        u.iter().cloned().fold(f32::MIN, f32::max) - u.iter().cloned().fold(f32::MAX, f32::min)
    };
    let (before, after) = (utility(&embed(start)), utility(&embed(out.best_noise)));
    eprintln!("hidden utility {before} -> {after} (spread over 24 seeds {spread})");
    assert!(
        after > before + 0.1 * spread,
        "hidden utility {before} -> {after} (spread {spread})"
    );
}
