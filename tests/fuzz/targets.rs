//! What each fuzz target does with the fuzzer's bytes: hand them to one of Tastebud's loaders
//! exactly as a file from a stranger would arrive, and use whatever loads the way the CLI
//! would. A target passes when the loader returns (`Ok` or a typed `Err`) without panicking,
//! hanging or allocating without bound. Shared by the cargo-fuzz binaries
//! (`tests/fuzz/fuzz_targets/`) and the replay test (`tests/fuzz_replay.rs`), which runs every
//! committed corpus file and finding on the stable toolchain in CI.

use tastebud_core::ModelFiles;
use tastebud_core::burn::tensor::Device;

/// A loader fed with one input.
pub type Target = fn(&[u8]);

/// Every target by name: the folder names under `corpus/` and `findings/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("torch_pickle", torch_pickle),
    ("gguf", gguf),
    ("model_index", model_index),
    ("model_config", model_config),
    ("scheduler_config", scheduler_config),
    ("tokenizer_json", tokenizer_json),
    ("vocab_merges", vocab_merges),
    ("bert_vocab", bert_vocab),
    ("noise", noise),
    ("image", image),
    ("preferences", preferences),
    ("head", head),
    ("manifest", manifest),
    ("world", world),
];

/// Splits one input into two files at the first `\0` (for loaders that read two files).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn files(entries: &[(&str, &[u8])]) -> ModelFiles {
    let mut files = ModelFiles::new("fuzz");
    for (name, bytes) in entries {
        files.insert(*name, bytes.to_vec());
    }
    files
}

/// A safetensors file: header checks, then every tensor read as f32.
pub fn safetensors(data: &[u8]) {
    use tastebud_core::weights;
    if let Ok(infos) = weights::inspect("fuzz.safetensors", data) {
        for name in infos.keys() {
            let _ = weights::read_f32("fuzz.safetensors", data, name);
        }
    }
    let _ = tastebud_core::torch_pickle::from_safetensors("fuzz.safetensors", data);
}

/// A `torch.save` archive (`.pt`/`.pth`/`.bin`): the zip, the pickle, the storages.
pub fn torch_pickle(data: &[u8]) {
    use tastebud_core::torch_pickle;
    let _ = torch_pickle::read_checkpoint("fuzz.pt", data);
    let _ = torch_pickle::convert_archive("fuzz.pt", data.to_vec());
}

/// A GGUF file: metadata and tensor infos, every tensor's values, and its conversion.
pub fn gguf(data: &[u8]) {
    use tastebud_core::gguf;
    if let Ok(file) = gguf::GgufFile::parse("fuzz.gguf", data) {
        for info in &file.tensors {
            let _ = file.values(info);
        }
    }
    let _ = gguf::read_weights("fuzz.gguf", data);
    let _ = gguf::to_safetensors("fuzz.gguf", data);
}

/// `model_index.json` and the files it asks for.
pub fn model_index(data: &[u8]) {
    if let Ok(index) = tastebud_core::pipeline::ModelIndex::parse("model_index.json", data) {
        let _ = index.files();
    }
}

/// A component's `config.json` (the first byte picks the component: UNet, VAE, TAESD, CLIP,
/// CLIP text encoder, DINOv2, OpenCLIP's `open_clip_config.json`, `preprocessor_config.json`,
/// ImageReward's `med_config.json`) over a weight file that holds one small tensor: every config must be refused or loaded without building a model
/// larger than what the file could fill.
pub fn model_config(data: &[u8]) {
    use tastebud_core::models::{clip, dinov2, taesd, unet, vae};
    use tastebud_core::rewards::image_reward::MED_CONFIG;
    let Some((&which, config)) = data.split_first() else {
        return;
    };
    let weights = tiny_weights();
    let device = Device::flex();
    let component = files(&[
        ("config.json", config),
        ("diffusion_pytorch_model.safetensors", &weights),
        ("model.safetensors", &weights),
    ]);
    match which % 9 {
        0 => drop(unet::UNet::from_files(component, &device)),
        1 => drop(vae::AutoencoderKl::from_files(component, &device)),
        2 => drop(taesd::TinyAutoencoder::from_files(component, &device)),
        3 => {
            // A CLIP folder also needs a tokenizer: the smallest vocab.json + merges.txt.
            let mut component = component;
            component.insert("vocab.json", br#"{"a</w>": 0}"#.to_vec());
            component.insert("merges.txt", b"#version: 0.2\n".to_vec());
            drop(clip::Clip::from_files(component, &device))
        }
        4 => drop(clip::text_encoder::ClipTextEncoder::from_files(
            component, &device,
        )),
        5 => drop(dinov2::Dinov2Model::from_files(
            &mut component.clone(),
            &device,
        )),
        7 => drop(clip::open_clip::OpenClipArch::parse(
            "open_clip_config.json",
            config,
        )),
        8 => {
            let processor = files(&[("preprocessor_config.json", config)]);
            drop(tastebud_core::preprocess::ImageProcessorConfig::from_files(
                &processor,
            ))
        }
        _ => {
            let mut reward = files(&[(MED_CONFIG, config), ("vocab.txt", b"[PAD]\n[UNK]\n")]);
            reward.insert("ImageReward.pt", weights);
            drop(tastebud_core::rewards::image_reward::ImageReward::from_files(reward, &device));
        }
    }
}

/// One f32 tensor named `x`, as safetensors.
fn tiny_weights() -> Vec<u8> {
    let header = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

/// `scheduler_config.json` and the sampling tables built from it.
pub fn scheduler_config(data: &[u8]) {
    use tastebud_core::scheduler::{EulerScheduler, SchedulerConfig};
    if let Ok(config) = serde_json::from_slice::<SchedulerConfig>(data) {
        for steps in 1..=4 {
            let _ = EulerScheduler::new(&config, steps, "scheduler_config.json");
        }
    }
}

fn encode_with(files: &ModelFiles) {
    if let Ok(tokenizer) = tastebud_core::tokenizer::ClipTokenizer::from_files(files) {
        let _ = tokenizer.encode("a red circle left of a blue square", true);
        let _ = tokenizer.encode("", false);
    }
}

/// `tokenizer.json` and `tokenizer_config.json` (split at the first `\0`; no config when
/// empty), then a prompt encoded with them.
pub fn tokenizer_json(data: &[u8]) {
    let (tokenizer, config) = split(data);
    let mut files = files(&[("tokenizer.json", tokenizer)]);
    if !config.is_empty() {
        files.insert("tokenizer_config.json", config.to_vec());
    }
    encode_with(&files);
}

/// `vocab.json` and `merges.txt` (split at the first `\0`), then a prompt encoded with them.
pub fn vocab_merges(data: &[u8]) {
    let (vocab, merges) = split(data);
    encode_with(&files(&[("vocab.json", vocab), ("merges.txt", merges)]));
}

/// BERT's `vocab.txt` (ImageReward), then a prompt encoded with it.
pub fn bert_vocab(data: &[u8]) {
    use tastebud_core::bert_tokenizer::{BertTokenizer, VOCAB_FILE};
    if let Ok(tokenizer) = BertTokenizer::from_files(&files(&[(VOCAB_FILE, data)])) {
        let _ = tokenizer.encode("a red circle left of a blue square", 35, true);
    }
}

/// Saved noise: `.npy` or safetensors.
pub fn noise(data: &[u8]) {
    let _ = tastebud_core::noise::Noise::from_bytes("noise.npy", data);
}

/// A PNG or JPEG image, decoded as the reward pipelines read it.
pub fn image(data: &[u8]) {
    if let Ok(image) = tastebud_core::preprocess::decode_image("fuzz.png", data) {
        let _ = image.to_rgb();
    }
}

/// A preference file, validated, summarised and merged into an empty store.
pub fn preferences(data: &[u8]) {
    use tastebud_core::personal::store::{Limits, PreferenceStore};
    if let Ok(store) = PreferenceStore::from_json("preferences.json", data, &Limits::default()) {
        let _ = store.summary();
        let _ = PreferenceStore::new(None).import(store);
    }
}

/// A personal head: `head.json` and `head.safetensors` (split at the first `\0`).
pub fn head(data: &[u8]) {
    use tastebud_core::personal::{HEAD_CONFIG, HEAD_WEIGHTS, PersonalHead};
    let (config, weights) = split(data);
    let mut files = files(&[(HEAD_CONFIG, config), (HEAD_WEIGHTS, weights)]);
    let _ = PersonalHead::from_files(&mut files, &Device::flex());
}

/// A model manifest, and a file checked against it.
pub fn manifest(data: &[u8]) {
    use tastebud_core::manifest::Manifest;
    if let Ok(manifest) = Manifest::from_json("manifest.json", data) {
        for file in manifest.files_under("") {
            let _ = manifest.check(&file.file, "fuzz", data);
        }
    }
}

/// The shapes world's spec (split at the first `\0`), then a caption parsed with it.
pub fn world(data: &[u8]) {
    use tastebud_core::shapes::{World, prompt};
    let (spec, caption) = split(data);
    let caption = String::from_utf8_lossy(caption);
    if let Ok(world) = World::from_json("world.json", spec) {
        let _ = prompt::parse(&world, &caption);
    }
    if let Ok(world) = World::builtin() {
        let _ = prompt::parse(&world, &caption);
    }
}
