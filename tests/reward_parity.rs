//! Rewards against their Python references (tests/reference/make_reward_fixtures.py): scores of
//! float images through the differentiable preprocessing, of PNG files through each reward's
//! published preprocessing (and transformers 5's `CLIPImageProcessor` on request), image
//! gradients against PyTorch's, from each reward's published layout.

mod common;

use common::*;
use tastebud_core::ModelFiles;
use tastebud_core::preprocess::{ImageFile, PreprocessChoice, decode_image};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};
use tastebud_core::torch_pickle;

const REFERENCE: &str = "rewards/reference.safetensors";
/// ImageReward's fixtures come from image-reward 1.5 in its own environment
/// (tests/reference/make_imagereward_fixtures.py).
const IMAGE_REWARD: &str = "rewards/imagereward-tiny";
const PROMPT: &str = "a photo of a cat";

fn reference(name: &str) -> Vec<f32> {
    if name.starts_with("imagereward.") {
        let file = format!("{IMAGE_REWARD}/reference.safetensors");
        return reference_tensor_in(&file, name).0;
    }
    reference_tensor_in(REFERENCE, name).0
}

/// The published layout of each fixture reward, keyed by its reference name.
fn files_for(name: &str) -> (RewardKind, ModelFiles) {
    match name {
        "clip" => (RewardKind::Clip, model_files("clip-openai")),
        "pickscore" => (RewardKind::PickScore, model_files("clip-openclip")),
        "hps" => {
            let mut files = model_files("rewards/open-clip-tiny");
            files.take("open_clip_model.safetensors");
            (RewardKind::Hps, files)
        }
        "open_clip" => {
            let mut files = model_files("rewards/open-clip-tiny");
            files.take("HPS_v2.1_compressed.pt");
            (RewardKind::Clip, files)
        }
        "aesthetic" => {
            let mut files = model_files("clip-openai");
            let head = "sac+logos+ava1-l14-linearMSE.pth";
            let bytes = std::fs::read(fixtures().join("rewards/aesthetic-head").join(head))
                .expect("aesthetic head fixture");
            files.insert(head, bytes);
            (RewardKind::Aesthetic, files)
        }
        "dino" => {
            let mut files = model_files("rewards/dinov2-tiny");
            let bytes = std::fs::read(fixtures().join("image1.png")).expect("image fixture");
            files.insert("image1.png", bytes);
            (RewardKind::Dino, files)
        }
        "imagereward" => (RewardKind::ImageReward, model_files(IMAGE_REWARD)),
        other => panic!("no fixture for {other}"),
    }
}

fn reward_set(name: &str, device: &tastebud_core::burn::tensor::Device) -> RewardSet {
    let (kind, files) = files_for(name);
    let reward = rewards::load(kind, files, device).expect("reward loads");
    let mut set = RewardSet::new(vec![RewardTerm {
        label: name.into(),
        reward,
        weight: 1.0,
    }])
    .expect("reward set");
    set.set_prompt(PROMPT, false).expect("prompt encodes");
    set
}

fn float_images(
    device: &tastebud_core::burn::tensor::Device,
) -> tastebud_core::burn::tensor::Tensor<4> {
    tensor(reference("images"), [2, 3, 48, 64], device)
}

fn png_images() -> Vec<ImageFile> {
    // The order of make_fixtures.file_images().
    [
        "image0.png",
        "image1.png",
        "preprocess/rgb-93x60.png",
        "preprocess/rgba-120x90.png",
    ]
    .iter()
    .map(|n| {
        let bytes = std::fs::read(fixtures().join(n)).expect("image fixture");
        decode_image(n, &bytes).expect("image decodes")
    })
    .collect()
}

fn check_scores(name: &str) {
    for device in devices() {
        let set = reward_set(name, &device.device);
        let on = device_name(&device);
        let values = set.evaluate(float_images(&device.device)).expect("scores");
        let got = read(values.rewards[0].clone());
        assert_close(
            &format!("{name} float scores on {on}"),
            &got,
            &reference(&format!("{name}.float_scores")),
            1e-4,
        );
        // Files: each reward's published pipeline by default, transformers 5's processor on
        // request (ImageReward's script records only its own).
        let mut paths = vec![(PreprocessChoice::Auto, format!("{name}.file_scores"))];
        if !name.starts_with("imagereward") {
            let torchvision = format!("{name}.file_scores_torchvision");
            paths.push((PreprocessChoice::Torchvision, torchvision));
        }
        for (choice, key) in paths {
            let values = set
                .evaluate_files(&png_images(), choice, &device.device)
                .expect("file scores");
            let got = read(values.rewards[0].clone());
            assert_close(&format!("{key} on {on}"), &got, &reference(&key), 1e-4);
        }
    }
}

/// d(sum of scores)/d(images) through preprocessing, backbone and head, against PyTorch.
fn check_gradient(name: &str) {
    for device in devices() {
        let ad = device.device.clone().autodiff();
        let set = reward_set(name, &ad);
        let x = float_images(&ad).require_grad();
        let values = set.evaluate(x.clone()).expect("scores");
        let grads = values.rewards[0].clone().sum().backward();
        let g = read(x.grad(&grads).expect("gradient reaches the images"));
        assert_close(
            &format!("{name} image gradient on {}", device_name(&device)),
            &g,
            &reference(&format!("{name}.grad")),
            1e-3,
        );
    }
}

#[test]
fn clipscore_matches_transformers() {
    check_scores("clip");
    check_gradient("clip");
}

#[test]
fn pickscore_matches_transformers() {
    check_scores("pickscore");
}

#[test]
fn hps_from_its_pt_matches_open_clip() {
    check_scores("hps");
    check_gradient("hps");
}

#[test]
fn clipscore_from_open_clip_safetensors_matches_open_clip() {
    check_scores("open_clip");
}

#[test]
fn aesthetic_from_its_pth_matches_the_laion_mlp() {
    check_scores("aesthetic");
    check_gradient("aesthetic");
}

/// DINOv2 with its 5x5 position grid interpolated to a 224 crop's 16x16 patches.
#[test]
fn dino_similarity_matches_transformers() {
    check_scores("dino");
    check_gradient("dino");
}

/// BLIP ViT + BERT with cross-attention + MLP, from `ImageReward.pt`, against image-reward 1.5
/// (files through its own PIL preprocessing).
#[test]
fn imagereward_from_its_pt_matches_image_reward() {
    check_scores("imagereward");
    check_gradient("imagereward");
}

/// Token ids against BLIP's `BertTokenizer` (+ `[DEC]`, `[ENC]`): accents, case, CJK, emoji,
/// punctuation, special tokens written in the prompt, unknown words, truncation to 35.
#[test]
fn imagereward_tokenizer_matches_blips() {
    let files = model_files(IMAGE_REWARD);
    let tok = tastebud_core::bert_tokenizer::BertTokenizer::from_files(&files).expect("vocab");
    let json = std::fs::read(fixtures().join(IMAGE_REWARD).join("reference.json")).expect("json");
    let json: serde_json::Value = serde_json::from_slice(&json).expect("parses");
    let cases = json["tokens"].as_array().expect("token cases");
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .filter(|&id| id != 0)
            .collect();
        let got = tok.encode(text, 35, true).expect("encodes");
        assert_eq!(got, want, "{text:?}");
        if want.len() == 35 {
            assert!(tok.encode(text, 35, false).is_err(), "{text:?} is overlong");
        }
    }
    assert!(tok.encode(" \t", 35, true).is_err());
}

#[test]
fn reward_set_weights_reno_losses() {
    let device = tastebud_core::ComputeDevice::cpu().device;
    let terms = ["clip", "aesthetic"]
        .iter()
        .zip([0.01f32, 0.5])
        .map(|(name, weight)| {
            let (kind, files) = files_for(name);
            RewardTerm {
                label: name.to_string(),
                reward: rewards::load(kind, files, &device).expect("reward loads"),
                weight,
            }
        })
        .collect();
    let mut set = RewardSet::new(terms).expect("reward set");
    set.set_prompt(PROMPT, false).expect("prompt");
    let values = set.evaluate(float_images(&device)).expect("scores");
    let scores = pollster::block_on(set.read(values)).expect("readback");
    let clip = reference("clip.float_scores");
    let aesthetic = reference("aesthetic.float_scores");
    for (i, s) in scores.iter().enumerate() {
        let loss = 0.01 * (100.0 - clip[i]) + 0.5 * (10.0 - aesthetic[i]);
        let total = 0.01 * clip[i] + 0.5 * aesthetic[i];
        assert!(
            (s.loss - loss).abs() < 1e-4 * loss.abs().max(1.0),
            "{} vs {loss}",
            s.loss
        );
        assert!((s.weighted_total - total).abs() < 1e-4 * total.abs().max(1.0));
        assert_eq!(s.rewards.len(), 2);
    }
}

#[test]
fn checkpoints_that_run_code_are_refused() {
    let path = fixtures().join("rewards/bad/runs-code.pt");
    let bytes = std::fs::read(&path).expect("fixture");
    let err = torch_pickle::read_checkpoint("runs-code.pt", &bytes).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("system") && msg.contains("never runs code"),
        "{msg}"
    );

    let bytes = std::fs::read(fixtures().join("rewards/bad/legacy.pt")).expect("fixture");
    let msg = torch_pickle::read_checkpoint("legacy.pt", &bytes)
        .expect_err("legacy refused")
        .to_string();
    assert!(msg.contains("legacy"), "{msg}");

    // Truncated anywhere: an error, never a panic.
    let good =
        std::fs::read(fixtures().join("rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth"))
            .expect("fixture");
    for cut in [10, good.len() / 3, good.len() / 2, good.len() - 30] {
        assert!(torch_pickle::read_checkpoint("cut.pth", &good[..cut]).is_err());
    }
}

/// Hostile pickles end in an error naming the file and the limit, never a crash.
#[test]
fn hostile_pickles_are_refused_by_their_limits() {
    for (depth, limit) in [
        (1_000_000, "the stack holds more than 262144 values"),
        (200, "nest deeper than 100 levels"),
    ] {
        let deep = torch_archive(&nested_lists_pickle(depth));
        let msg = torch_pickle::read_checkpoint("deep.pt", &deep)
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("deep.pt") && msg.contains(limit), "{msg}");
    }
}

#[test]
fn pt_reader_reads_the_tensors_torch_saved() {
    let bytes = std::fs::read(fixtures().join("rewards/open-clip-tiny/HPS_v2.1_compressed.pt"))
        .expect("fixture");
    let from_pt = torch_pickle::read_checkpoint("hps.pt", &bytes).expect("reads");
    let st = std::fs::read(fixtures().join("rewards/open-clip-tiny/open_clip_model.safetensors"))
        .expect("fixture");
    let from_st = torch_pickle::from_safetensors("open_clip.safetensors", &st).expect("reads");
    // The same state dict saved two ways: equal names, dtypes, shapes and bytes.
    assert_eq!(from_pt.len(), from_st.len());
    assert!(from_pt.len() > 20);
    for (name, t) in &from_st {
        assert_eq!(from_pt.get(name), Some(t), "{name}");
    }
}

#[test]
fn wrong_or_incomplete_reward_files_are_named() {
    let device = tastebud_core::ComputeDevice::cpu().device;
    let load = |kind, files| rewards::load(kind, files, &device).map(|_| ());

    // HPS without open_clip_config.json falls back to ViT-H-14 (head width 80): the tiny model
    // does not divide, and the error says so.
    let (_, mut files) = files_for("hps");
    files.take("open_clip_config.json");
    let msg = load(RewardKind::Hps, files)
        .expect_err("not ViT-H")
        .to_string();
    assert!(msg.contains("head_width 80"), "{msg}");

    // A CLIP folder without the aesthetic head.
    let msg = load(RewardKind::Aesthetic, model_files("clip-openai"))
        .expect_err("no head")
        .to_string();
    assert!(msg.contains("sac+logos+ava1-l14-linearMSE.pth"), "{msg}");

    // The aesthetic head given as an HPS checkpoint: the missing CLIP tensors are named.
    let mut files = ModelFiles::new("wrong");
    let head =
        std::fs::read(fixtures().join("rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth"))
            .expect("fixture");
    files.insert("HPS_v2.1_compressed.pt", head);
    let msg = load(RewardKind::Hps, files)
        .expect_err("wrong kind")
        .to_string();
    assert!(msg.contains("visual.conv1.weight"), "{msg}");

    // The head under another name, on another CLIP of the same embedding width, loads.
    let (_, mut files) = files_for("aesthetic");
    let head = files
        .take("sac+logos+ava1-l14-linearMSE.pth")
        .expect("head");
    let mut files = model_files("clip-openclip");
    files.insert("my-head.pth", head);
    assert!(load(RewardKind::Aesthetic, files).is_ok());

    // DINOv2 without a reference image.
    let msg = load(RewardKind::Dino, model_files("rewards/dinov2-tiny"))
        .expect_err("no reference")
        .to_string();
    assert!(msg.contains("reference images"), "{msg}");

    // ImageReward: each of its three files named when missing; a config it cannot run refused
    // by field; a vocabulary too big for the model; a checkpoint of another reward.
    for (missing, named) in [
        ("vocab.txt", "vocab.txt"),
        ("med_config.json", "med_config.json"),
        ("ImageReward.pt", "ImageReward.pt"),
    ] {
        let mut files = model_files(IMAGE_REWARD);
        files.take(missing);
        let msg = load(RewardKind::ImageReward, files)
            .expect_err("incomplete")
            .to_string();
        assert!(msg.contains(named), "{missing}: {msg}");
    }
    let mut files = model_files(IMAGE_REWARD);
    files.insert(
        "med_config.json",
        br#"{"hidden_size": 32, "num_attention_heads": 4, "add_cross_attention": true,
             "position_embedding_type": "relative_key"}"#
            .to_vec(),
    );
    let msg = load(RewardKind::ImageReward, files)
        .expect_err("relative positions")
        .to_string();
    assert!(msg.contains("relative_key"), "{msg}");
    let mut files = model_files(IMAGE_REWARD);
    let mut vocab = files.take("vocab.txt").expect("vocab");
    vocab.extend(b"extra\n");
    files.insert("vocab.txt", vocab);
    let msg = load(RewardKind::ImageReward, files)
        .expect_err("vocabulary too big")
        .to_string();
    assert!(msg.contains("vocab_size"), "{msg}");
    let mut files = model_files(IMAGE_REWARD);
    files.insert(
        "ImageReward.pt",
        std::fs::read(fixtures().join("rewards/open-clip-tiny/HPS_v2.1_compressed.pt"))
            .expect("fixture"),
    );
    let msg = load(RewardKind::ImageReward, files)
        .expect_err("wrong kind")
        .to_string();
    assert!(
        msg.contains("blip.visual_encoder.patch_embed.proj.weight"),
        "{msg}"
    );
    assert!(RewardKind::parse("nope").is_err());
    assert_eq!(RewardKind::parse("HPSv2.1").ok(), Some(RewardKind::Hps));
}

#[test]
fn bad_images_and_prompts_are_errors() {
    let device = tastebud_core::ComputeDevice::cpu().device;
    let mut set = reward_set("clip", &device);
    let gray = tensor(vec![0.5; 2 * 16 * 16], [2, 1, 16, 16], &device);
    assert!(set.evaluate(gray).is_err());
    assert!(
        set.evaluate_files(&[], PreprocessChoice::Auto, &device)
            .is_err()
    );
    assert!(set.set_prompt("   ", false).is_err());
    // The cached text side is keyed by the truncation choice too.
    let long = "a ".repeat(100);
    assert!(set.set_prompt(&long, true).is_ok());
    let msg = set
        .set_prompt(&long, false)
        .expect_err("overlong")
        .to_string();
    assert!(msg.contains("tokens"), "{msg}");
}
