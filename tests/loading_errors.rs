//! Bad model files give typed errors that name the file and tensor; nothing panics or aborts.

mod common;

use std::collections::HashMap;

use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tastebud_core::models::clip::Clip;
use tastebud_core::{ComputeDevice, Error, ModelFiles};

/// The openai fixture with its weight file rewritten by `edit` (name -> (dtype, shape, bytes)).
fn with_weights(
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> ModelFiles {
    let mut files = model_files("clip-openai");
    let bytes = files.take("model.safetensors").unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    files.insert(
        "model.safetensors",
        safetensors::serialize(views, None).unwrap(),
    );
    files
}

fn load(files: ModelFiles) -> Error {
    match Clip::from_files(files, &ComputeDevice::cpu().device) {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let err = load(with_weights(|t| {
        t.remove("text_model.final_layer_norm.weight");
    }));
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensors { .. }), "{msg}");
    assert!(
        msg.contains("text_model.final_layer_norm.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn unused_tensor_is_named() {
    let err = load(with_weights(|t| {
        t.insert(
            "text_model.extra.weight".into(),
            (Dtype::F32, vec![2], vec![0; 8]),
        );
    }));
    assert!(matches!(err, Error::UnusedTensors { .. }), "{err}");
    assert!(err.to_string().contains("text_model.extra.weight"), "{err}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let err = load(with_weights(|t| {
        t.insert(
            "text_projection.weight".into(),
            (Dtype::F32, vec![8, 32], vec![0; 8 * 32 * 4]),
        );
    }));
    let msg = err.to_string();
    assert!(matches!(err, Error::BadShape { .. }), "{msg}");
    assert!(
        msg.contains("text_projection.weight")
            && msg.contains("[8, 32]")
            && msg.contains("[16, 32]"),
        "{msg}"
    );
}

#[test]
fn integer_weights_are_refused() {
    let err = load(with_weights(|t| {
        let (_, shape, bytes) = t.remove("visual_projection.weight").unwrap();
        t.insert(
            "visual_projection.weight".into(),
            (Dtype::I32, shape, bytes),
        );
    }));
    assert!(matches!(err, Error::BadDtype { .. }), "{err}");
    assert!(
        err.to_string().contains("visual_projection.weight") && err.to_string().contains("I32"),
        "{err}"
    );
}

#[test]
fn corrupt_and_truncated_files_are_refused() {
    for bytes in [b"definitely not safetensors".to_vec(), {
        let mut b = std::fs::read(fixtures().join("clip-openai/model.safetensors")).unwrap();
        b.truncate(b.len() / 2);
        b
    }] {
        let mut files = model_files("clip-openai");
        files.insert("model.safetensors", bytes);
        let err = load(files);
        assert!(matches!(err, Error::CorruptWeights { .. }), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

#[test]
fn missing_and_bad_config_are_named() {
    let mut files = model_files("clip-openai");
    files.take("config.json");
    let err = load(files);
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    let mut files = model_files("clip-openai");
    files.insert("config.json", b"{ not json".to_vec());
    let err = load(files);
    assert!(
        matches!(err, Error::BadJson { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    let mut files = model_files("clip-openai");
    let cfg = String::from_utf8(files.take("config.json").unwrap()).unwrap();
    files.insert(
        "config.json",
        cfg.replace("quick_gelu", "relu").into_bytes(),
    );
    let err = load(files);
    assert!(err.to_string().contains("hidden_act `relu`"), "{err}");
}

#[test]
fn missing_weights_and_tokenizer_are_named() {
    let mut files = model_files("clip-openai");
    files.take("model.safetensors");
    let err = load(files);
    assert!(
        err.to_string()
            .contains("model.safetensors or model.fp16.safetensors"),
        "{err}"
    );

    let mut files = model_files("clip-openai");
    files.take("tokenizer.json");
    let err = load(files);
    assert!(
        err.to_string().contains("tokenizer.json or vocab.json"),
        "{err}"
    );
}

#[test]
fn bad_prompts_and_images_are_refused() {
    let clip = Clip::from_files(model_files("clip-openai"), &ComputeDevice::cpu().device).unwrap();
    assert!(matches!(
        clip.tokenize("   ", false),
        Err(Error::BadPrompt(_))
    ));
    let err =
        tastebud_core::preprocess::decode_image("cat.png", b"\x89PNG\r\n\x1a\nbroken").unwrap_err();
    assert!(
        matches!(err, Error::BadImage { .. }) && err.to_string().contains("cat.png"),
        "{err}"
    );
    let err = tastebud_core::preprocess::decode_image("notes.txt", b"hello").unwrap_err();
    assert!(err.to_string().contains("not a PNG or JPEG"), "{err}");
    let err = clip
        .image_embeds(tensor(vec![0.0; 3 * 32 * 32], [1, 3, 32, 32], &clip.device))
        .unwrap_err();
    assert!(err.to_string().contains("[_, 3, 224, 224]"), "{err}");
}

/// bf16 checkpoints are cast to f32 on load (burn-store would abort on the CPU backend otherwise)
/// and score like the f32 weights they were rounded from.
#[test]
fn bf16_weights_load_and_score_like_f32() {
    let bf16 = with_weights(|t| {
        for (dtype, _, bytes) in t.values_mut() {
            if *dtype == Dtype::F32 {
                *bytes = bytes
                    .chunks_exact(4)
                    .flat_map(|b| {
                        half::bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .to_le_bytes()
                    })
                    .collect();
                *dtype = Dtype::BF16;
            }
        }
    });
    let device = ComputeDevice::cpu().device;
    let ours = Clip::from_files(bf16, &device).unwrap();
    let f32_model = Clip::from_files(model_files("clip-openai"), &device).unwrap();
    let (pixels, s) = reference_tensor("pixel_values");
    let embed = |clip: &Clip| {
        read(
            clip.image_embeds(tensor(pixels.clone(), [s[0], s[1], s[2], s[3]], &device))
                .unwrap(),
        )
    };
    let (a, b) = (embed(&ours), embed(&f32_model));
    let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = dot / (norm(&a) * norm(&b));
    assert!(
        cosine > 0.999,
        "bf16 vs f32 image embeddings: cosine {cosine}"
    );
    assert!(a != b, "bf16 rounding should change the numbers a little");
}

/// A buffer the GPU cannot hold is reported, when the result is read, as a typed
/// out-of-memory error that says how to need less; the device keeps working afterwards.
#[test]
fn device_out_of_memory_is_a_typed_error_with_levers() {
    let gpu = devices().pop().expect("wgpu device");
    let limit = gpu.max_buffer_bytes.expect("wgpu reports its buffer limit");
    let elements = (limit / 4 + (1 << 20)) as usize;
    let big = tastebud_core::burn::tensor::Tensor::<1>::ones([elements], &gpu.device);
    let err = pollster::block_on(tastebud_core::read_f32(big.sum())).expect_err("too big");
    assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("can't allocate buffer of size")
            && text.contains("f16")
            && text.contains("TAESD"),
        "{text}"
    );
    let small = tensor(vec![1.0, 2.0], [2], &gpu.device);
    assert_eq!(read(small.sum()), vec![3.0]);
}
