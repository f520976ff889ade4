//! CLIP against transformers on the tiny fixtures (tests/reference/make_fixtures.py):
//! tokenizer ids, text and vision towers, scores, and both image preprocessing paths,
//! on the CPU backend (flex) and on wgpu (lavapipe).

mod common;

use common::*;
use tastebud_core::models::clip::Clip;
use tastebud_core::models::clip::text_encoder::ClipTextEncoder;
use tastebud_core::preprocess::{
    FilePreprocess, ImageProcessorConfig, PreprocessChoice, decode_image, pixels_from_file,
    resize_crop_normalize,
};
use tastebud_core::tokenizer::ClipTokenizer;
use tastebud_core::{Error, ModelFiles, models::clip::config::ClipConfig};

const FLAVOURS: [&str; 2] = ["clip-openai", "clip-openclip"];
const RTOL: f32 = 1e-4;

#[test]
fn tokenizer_ids_match_transformers() {
    let reference = reference_json();
    let prompts: Vec<String> = serde_json::from_value(reference["prompts"].clone()).unwrap();
    for flavour in FLAVOURS {
        let tokenizer = ClipTokenizer::from_files(&model_files(flavour)).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference[flavour]["ids"].clone()).unwrap();
        let lengths: Vec<usize> =
            serde_json::from_value(reference[flavour]["unpadded_lengths"].clone()).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            assert_eq!(
                tokenizer.encode_unpadded(prompt).unwrap().len(),
                lengths[i],
                "{flavour}: length of {prompt:?}"
            );
            let ours = tokenizer.encode(prompt, true).unwrap();
            assert_eq!(ours.ids, ids[i], "{flavour}: ids of {prompt:?}");
            assert_eq!(ours.ids[ours.eos_index], tokenizer.eos_id);
        }
    }
}

#[test]
fn overlong_prompt_is_refused_unless_truncation_is_allowed() {
    let tokenizer = ClipTokenizer::from_files(&model_files("clip-openai")).unwrap();
    let long = "a ".repeat(100);
    let err = tokenizer.encode(&long, false).unwrap_err();
    assert!(matches!(err, Error::BadPrompt(_)), "{err}");
    assert!(err.to_string().contains("102 tokens"), "{err}");
    let cut = tokenizer.encode(&long, true).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.eos_index, 76);
}

#[test]
fn text_and_vision_towers_match_transformers() {
    let reference = reference_json();
    let (pixels, pshape) = reference_tensor("pixel_values");
    for device in devices() {
        for flavour in FLAVOURS {
            let what = |t: &str| format!("{flavour} on {}: {t}", device_name(&device));
            let clip = Clip::from_files(model_files(flavour), &device.device).unwrap();
            let want_scale = reference[flavour]["logit_scale"].as_f64().unwrap() as f32;
            assert!(
                (clip.logit_scale - want_scale).abs() < 1e-6,
                "{}",
                what("logit_scale")
            );

            let prompts: Vec<String> =
                serde_json::from_value(reference[flavour]["scored_prompts"].clone()).unwrap();
            let tokens: Vec<_> = prompts
                .iter()
                .map(|p| clip.tokenize(p, false).unwrap())
                .collect();
            let ids: Vec<Vec<u32>> = tokens.iter().map(|t| t.ids.clone()).collect();
            let eos: Vec<usize> = tokens.iter().map(|t| t.eos_index).collect();
            let hidden = clip
                .model
                .text_model
                .forward(&ids, &eos, &device.device)
                .last_hidden_state;
            assert_close(
                &what("text last_hidden_state"),
                &read(hidden),
                &reference_tensor(&format!("{flavour}.text_last_hidden")).0,
                RTOL,
            );

            let text = clip.text_embeds(&tokens);
            assert_close(
                &what("text_embeds"),
                &read(text.clone()),
                &reference_tensor(&format!("{flavour}.text_embeds")).0,
                RTOL,
            );

            let px = tensor(
                pixels.clone(),
                [pshape[0], pshape[1], pshape[2], pshape[3]],
                &device.device,
            );
            let image = clip.image_embeds(px).unwrap();
            assert_close(
                &what("image_embeds"),
                &read(image.clone()),
                &reference_tensor(&format!("{flavour}.image_embeds")).0,
                RTOL,
            );

            let cosine = Clip::cosine(image, text);
            let cos = read(cosine);
            assert_close(
                &what("cosine"),
                &cos,
                &reference_tensor(&format!("{flavour}.cosine")).0,
                RTOL,
            );
            let logits: Vec<f32> = cos.iter().map(|c| c * clip.logit_scale.exp()).collect();
            assert_close(
                &what("logits_per_image"),
                &logits,
                &reference_tensor(&format!("{flavour}.logits_per_image")).0,
                RTOL,
            );
        }
    }
}

/// transformers 5's `CLIPImageProcessor` resizes uint8 images with torch's fixed-point kernels;
/// ours follow the same arithmetic, so the normalised pixels agree to float rounding.
#[test]
fn file_preprocessing_matches_clip_image_processor() {
    let (want, shape) = reference_tensor("pixel_values");
    let per_image = shape[1] * shape[2] * shape[3];
    let cfg = ImageProcessorConfig::from_files(&model_files("clip-openai")).unwrap();
    assert_eq!(cfg, ImageProcessorConfig::default());
    for i in 0..shape[0] {
        let path = fixtures().join(format!("image{i}.png"));
        let img = decode_image("fixture", &std::fs::read(path).unwrap()).unwrap();
        let ours = pixels_from_file(&img, &cfg, FilePreprocess::Torchvision);
        let want = &want[i * per_image..(i + 1) * per_image];
        for (j, (o, w)) in ours.iter().zip(want).enumerate() {
            assert!((o - w).abs() < 1e-5, "image{i} pixel {j}: {o} vs {w}");
        }
    }
}

/// Every file pipeline against Python (tests/reference/make_preprocess_fixtures.py): Pillow
/// through torchvision transforms (OpenAI CLIP, open_clip), transformers' PIL processor and
/// transformers 5's torchvision processor, on RGB, grey, RGBA and grey+alpha PNGs that are
/// downscaled, upscaled, left at their size and cropped at offsets that round differently.
/// The pixels are the same uint8 values normalised, so they agree to float rounding.
#[test]
fn file_preprocessing_matches_each_published_pipeline() {
    let folder = fixtures().join("preprocess");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(folder.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let paths = [
        ("pil_transforms", FilePreprocess::PilTransforms),
        ("pil_processor", FilePreprocess::PilProcessor),
        ("torchvision", FilePreprocess::Torchvision),
    ];
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let img = decode_image(file, &std::fs::read(folder.join(file)).unwrap()).unwrap();
        let cfg = ImageProcessorConfig {
            shortest_edge: case["shortest_edge"].as_u64().unwrap() as usize,
            crop: case["crop"].as_u64().unwrap() as usize,
            ..ImageProcessorConfig::default()
        };
        for (name, how) in paths {
            let key = format!("{}.{name}", case["key"].as_str().unwrap());
            let want: Vec<f32> = st
                .tensor(&key)
                .unwrap()
                .data()
                .iter()
                .enumerate()
                .map(|(i, &u)| {
                    let ch = i / (cfg.crop * cfg.crop);
                    (f32::from(u) / 255.0 - cfg.mean[ch]) / cfg.std[ch]
                })
                .collect();
            let ours = pixels_from_file(&img, &cfg, how);
            assert_eq!(ours.len(), want.len(), "{key}");
            let worst = ours
                .iter()
                .zip(&want)
                .map(|(o, w)| (o - w).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{key}: worst pixel difference {worst}");
        }
    }
}

/// `--preprocess` resolves per reward: `auto` keeps each reward's published pipeline, `pil`
/// keeps a Pillow one, `torchvision` is transformers 5's processor for every reward.
#[test]
fn preprocess_choice_resolves_per_reward() {
    let mut cfg = ImageProcessorConfig::default();
    assert_eq!(cfg.files, FilePreprocess::PilTransforms);
    let resolve = |cfg: &ImageProcessorConfig, choice: &str| {
        cfg.file_preprocess(choice.parse::<PreprocessChoice>().unwrap())
    };
    assert_eq!(resolve(&cfg, "auto"), FilePreprocess::PilTransforms);
    assert_eq!(resolve(&cfg, "torchvision"), FilePreprocess::Torchvision);
    cfg.files = FilePreprocess::PilProcessor;
    assert_eq!(resolve(&cfg, "pil"), FilePreprocess::PilProcessor);
    cfg.files = FilePreprocess::Torchvision;
    assert_eq!(resolve(&cfg, "pil"), FilePreprocess::PilProcessor);
    let err = "bilinear"
        .parse::<PreprocessChoice>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("preprocess") && err.contains("auto, pil, torchvision"),
        "{err}"
    );
}

#[test]
fn differentiable_preprocess_matches_torchvision() {
    let cfg = ImageProcessorConfig::default();
    for device in devices() {
        for i in 0..3 {
            let (x, s) = reference_tensor(&format!("resize{i}.input"));
            let (want, _) = reference_tensor(&format!("resize{i}.output"));
            let x = tensor(x, [s[0], s[1], s[2], s[3]], &device.device);
            let got = read(resize_crop_normalize(x, &cfg));
            assert_close(
                &format!("resize{i} on {}", device_name(&device)),
                &got,
                &want,
                RTOL,
            );
        }
    }
}

#[test]
fn differentiable_preprocess_passes_gradients() {
    let cfg = ImageProcessorConfig::default();
    let device = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let (x, s) = reference_tensor("resize0.input");
    let x = tensor(x, [s[0], s[1], s[2], s[3]], &device).require_grad();
    let y = resize_crop_normalize(x.clone(), &cfg);
    let grads = y.sum().backward();
    let g = read(x.grad(&grads).expect("gradient reaches the image"));
    // d(sum)/dx = sum over outputs of the resize weights / std: positive, and summing to
    // (crop^2 / std_c) per channel times the share of the image the crop keeps.
    assert!(g.iter().all(|v| v.is_finite()));
    let total: f32 = g.iter().sum();
    let want: f32 = cfg.std.iter().map(|s| 224.0 * 224.0 / s).sum();
    assert!((total - want).abs() / want < 1e-3, "{total} vs {want}");
}

#[test]
fn config_presets_parse_with_transformers_defaults() {
    let cfg: ClipConfig =
        serde_json::from_str(r#"{"text_config": {}, "vision_config": {}}"#).unwrap();
    assert_eq!(
        (cfg.text_config.hidden_size, cfg.vision_config.patch_size),
        (512, 32)
    );
    assert_eq!(cfg.text_config.hidden_act, "quick_gelu");
}

/// SD 2.x's text encoder: a standalone CLIPTextModel (gelu, pad "!") in f16.
#[test]
fn sd2_text_encoder_matches_transformers() {
    let tokens = openclip_scored_tokens();
    for device in devices() {
        let encoder =
            ClipTextEncoder::from_files(model_files("sd-turbo-tiny/text_encoder"), &device.device)
                .unwrap();
        assert!(encoder.model.text_projection.is_none());
        let out = encoder.forward(&tokens).unwrap();
        let on = device_name(&device);
        assert_close(
            &format!("sd2 last_hidden_state on {on}"),
            &read(out.last_hidden_state),
            &reference_tensor("sd2-text-encoder.last_hidden_state").0,
            RTOL,
        );
        assert_close(
            &format!("sd2 pooler_output on {on}"),
            &read(out.pooled),
            &reference_tensor("sd2-text-encoder.pooler_output").0,
            RTOL,
        );
    }
    let mut bad = tokens[0].clone();
    bad.eos_index = 77;
    let encoder = ClipTextEncoder::from_files(
        model_files("sd-turbo-tiny/text_encoder"),
        &tastebud_core::ComputeDevice::cpu().device,
    )
    .unwrap();
    assert!(matches!(
        encoder.forward(&[bad]),
        Err(Error::BadArgument { .. })
    ));
}

/// SDXL's second encoder (CLIPTextModelWithProjection): the penultimate hidden state without
/// the final LayerNorm, and the projected pooled output.
#[test]
fn sdxl_second_text_encoder_matches_transformers() {
    let tokens = openclip_scored_tokens();
    for device in devices() {
        let encoder = ClipTextEncoder::from_files(
            model_files("sdxl-turbo-tiny/text_encoder_2"),
            &device.device,
        )
        .unwrap();
        let on = device_name(&device);
        let (penultimate, out) = encoder.forward_with_penultimate(&tokens).unwrap();
        assert_close(
            &format!("sdxl penultimate on {on}"),
            &read(penultimate),
            &reference_tensor("sdxl-text-encoder-2.penultimate").0,
            RTOL,
        );
        let projected = encoder
            .project(out.pooled)
            .expect("CLIPTextModelWithProjection has a projection");
        assert_close(
            &format!("sdxl text_embeds on {on}"),
            &read(projected),
            &reference_tensor("sdxl-text-encoder-2.text_embeds").0,
            RTOL,
        );
    }
}

/// The scored prompts through the OpenCLIP tokenizer (pad "!"), as SD 2.x and SDXL use it.
fn openclip_scored_tokens() -> Vec<tastebud_core::tokenizer::TokenizedPrompt> {
    let reference = reference_json();
    let prompts: Vec<String> =
        serde_json::from_value(reference["clip-openclip"]["scored_prompts"].clone()).unwrap();
    let tokenizer = ClipTokenizer::from_files(&model_files("clip-openclip")).unwrap();
    prompts
        .iter()
        .map(|p| tokenizer.encode(p, false).unwrap())
        .collect()
}

/// The weight file of a fixture folder with every tensor renamed by `rename`.
fn renamed(folder: &str, file: &str, rename: impl Fn(&str) -> String) -> ModelFiles {
    let mut files = model_files(folder);
    let bytes = files.take(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (rename(&name), view))
        .collect();
    files.insert(file, safetensors::serialize(views, None).unwrap());
    files
}

/// Every layout transformers loads into a text encoder: the hub's `text_model.*`, the
/// unprefixed tower transformers 5's `save_pretrained` writes for `CLIPTextModel`, a `clip.`
/// base-model prefix and a doubled tower prefix, for `CLIPTextModel` (SD 2.x) and
/// `CLIPTextModelWithProjection` (SDXL's second encoder).
#[test]
fn text_encoders_load_every_layout_transformers_accepts() {
    let tokens = openclip_scored_tokens();
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    type Rename = fn(&str) -> String;
    let layouts: [(&str, Rename); 4] = [
        ("unprefixed", |k| k.replacen("text_model.", "", 1)),
        ("clip.", |k| format!("clip.{k}")),
        ("clip. unprefixed", |k| {
            format!("clip.{}", k.replacen("text_model.", "", 1))
        }),
        ("doubled", |k| {
            k.replacen("text_model.", "text_model.text_model.", 1)
        }),
    ];
    for (layout, rename) in layouts {
        let files = renamed("sd-turbo-tiny/text_encoder", "model.safetensors", rename);
        let encoder = ClipTextEncoder::from_files(files, &cpu).unwrap();
        assert!(encoder.model.text_projection.is_none(), "{layout}");
        let out = encoder.forward(&tokens).unwrap();
        assert_close(
            &format!("sd2 encoder, {layout} layout"),
            &read(out.last_hidden_state),
            &reference_tensor("sd2-text-encoder.last_hidden_state").0,
            RTOL,
        );
        let files = renamed(
            "sdxl-turbo-tiny/text_encoder_2",
            "model.safetensors",
            rename,
        );
        let encoder = ClipTextEncoder::from_files(files, &cpu).unwrap();
        let (_, out) = encoder.forward_with_penultimate(&tokens).unwrap();
        let projected = encoder.project(out.pooled).expect("projection loaded");
        assert_close(
            &format!("sdxl encoder 2, {layout} layout"),
            &read(projected),
            &reference_tensor("sdxl-text-encoder-2.text_embeds").0,
            RTOL,
        );
    }
    // Tensors of another model are still refused by name.
    let files = renamed("sd-turbo-tiny/text_encoder", "model.safetensors", |k| {
        k.replacen("text_model.", "vision_model.", 1)
    });
    let err = ClipTextEncoder::from_files(files, &cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("missing tensors: text_model.embeddings"),
        "{err}"
    );
}

/// `CLIPModel` folders in the layouts transformers loads (`clip.` prefix, doubled tower
/// prefixes) score like the hub layout.
#[test]
fn clip_models_load_every_layout_transformers_accepts() {
    let cpu = tastebud_core::ComputeDevice::cpu().device;
    let prompt = reference_json()["clip-openai"]["scored_prompts"][0]
        .as_str()
        .unwrap()
        .to_string();
    let images: Vec<_> = ["image0.png", "image1.png"]
        .iter()
        .map(|n| decode_image(n, &std::fs::read(fixtures().join(n)).unwrap()).unwrap())
        .collect();
    let score = |files: ModelFiles| {
        let clip = Clip::from_files(files, &cpu).unwrap();
        let scores =
            pollster::block_on(clip.score(&prompt, &images, PreprocessChoice::Auto, false));
        scores
            .unwrap()
            .iter()
            .map(|s| s.logit)
            .collect::<Vec<f32>>()
    };
    let want = score(model_files("clip-openai"));
    let layouts: [fn(&str) -> String; 2] = [
        |k| format!("clip.{k}"),
        |k| {
            k.replacen("text_model.", "text_model.text_model.", 1)
                .replacen("vision_model.", "vision_model.vision_model.", 1)
        },
    ];
    for rename in layouts {
        let got = score(renamed("clip-openai", "model.safetensors", rename));
        assert_eq!(got, want);
    }
}

/// A CLIP reward folder exactly as transformers 5 saves it (`CLIPModel.save_pretrained`,
/// `CLIPProcessor.save_pretrained`: its tokenizer.json, preprocessor_config.json and weights)
/// scores as transformers does with what it saved.
#[test]
fn a_clip_folder_saved_by_transformers_5_scores_like_it() {
    let reference = reference_json();
    let case = &reference["clip-tf5"];
    let prompt = case["prompt"].as_str().unwrap();
    let (logits, _) = reference_tensor("clip-tf5.logits_per_image");
    let images: Vec<_> = ["image0.png", "image1.png"]
        .iter()
        .map(|n| decode_image(n, &std::fs::read(fixtures().join(n)).unwrap()).unwrap())
        .collect();
    for device in devices() {
        let clip = Clip::from_files(model_files("clip-tf5"), &device.device).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(clip.tokenize(prompt, false).unwrap().ids, ids);
        // transformers 5 loads the saved processor as its torchvision CLIPImageProcessor.
        let scores =
            pollster::block_on(clip.score(prompt, &images, PreprocessChoice::Torchvision, false))
                .unwrap();
        let got: Vec<f32> = scores.iter().map(|s| s.logit).collect();
        assert_close(
            &format!("clip-tf5 on {}", device_name(&device)),
            &got,
            &logits,
            RTOL,
        );
    }
}

/// transformers 5 saves the image processor inside `processor_config.json`: it is read.
#[test]
fn the_image_processor_inside_processor_config_is_read() {
    let mut files = model_files("clip-tf5");
    let json = String::from_utf8(files.take("processor_config.json").unwrap()).unwrap();
    let json = json.replace("224", "160");
    files.insert("processor_config.json", json.into_bytes());
    let cfg = ImageProcessorConfig::from_files(&files).unwrap();
    assert_eq!((cfg.shortest_edge, cfg.crop), (160, 160));
    let err = Clip::from_files(files, &tastebud_core::ComputeDevice::cpu().device)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("processor_config.json") && err.contains("crop size 160"),
        "{err}"
    );
}
