//! Whole pipelines from diffusers snapshots (SD 1.x, SD-Turbo, SDXL-Turbo; tokenizer.json and
//! vocab.json + merges.txt; non-square, odd latent sides; 1 and 2 steps; the TAESD swap) against
//! diffusers' images within 1 level per channel, and the conditioning at rtol 1e-4.

mod common;

use common::*;
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{LoadedDecoder, Pipeline, Request};
use tastebud_core::{ComputeDevice, Error, ModelFiles};

fn request(case: &serde_json::Value) -> Request {
    let noise_file = case["noise"].as_str().unwrap();
    let bytes = std::fs::read(fixtures().join(noise_file)).unwrap();
    Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        noise: Some(Noise::from_bytes(noise_file, &bytes).unwrap()),
        seed: 0,
        steps: case["steps"].as_u64().unwrap() as usize,
        height: Some(case["height"].as_u64().unwrap() as usize),
        width: Some(case["width"].as_u64().unwrap() as usize),
    }
}

#[test]
fn pipelines_match_diffusers_images() {
    let reference = reference_json();
    for device in devices() {
        let on = device_name(&device);
        for (i, case) in reference["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let model = case["model"].as_str().unwrap();
            let pipeline = Pipeline::from_files(snapshot_files(model), &device.device).unwrap();
            let req = request(case);
            let conditioning = pipeline.encode_prompt(&req.prompt).unwrap();
            assert_eq!(conditioning.truncated, req.prompt.len() > 200, "case {i}");
            assert_close(
                &format!("{model} prompt embeds (case {i}) on {on}"),
                &read(conditioning.context),
                &reference_tensor(&format!("pipeline{i}.prompt_embeds")).0,
                1e-4,
            );
            if let Some(pooled) = conditioning.pooled {
                assert_close(
                    &format!("{model} pooled (case {i}) on {on}"),
                    &read(pooled),
                    &reference_tensor(&format!("pipeline{i}.pooled")).0,
                    1e-4,
                );
            }
            let image = pollster::block_on(pipeline.generate(&req)).unwrap();
            let (w, h, want) = fixture_png(case["image"].as_str().unwrap());
            assert_eq!((image.width, image.height), (w, h));
            let diff = max_pixel_diff(&image.pixels, &want);
            assert!(
                diff <= 1,
                "{model} case {i} on {on}: pixels differ by {diff}"
            );
        }
    }
}

#[test]
fn taesd_decoder_swap_matches_diffusers() {
    let case = &reference_json()["taesd_swap"];
    for device in devices() {
        let mut pipeline =
            Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &device.device).unwrap();
        let taesd = LoadedDecoder::from_files(model_files("taesd"), None, &device.device).unwrap();
        assert_eq!(
            (taesd.class.as_str(), taesd.upscale),
            ("AutoencoderTiny", 8)
        );
        pipeline.set_decoder(taesd);
        let image = pollster::block_on(pipeline.generate(&request(case))).unwrap();
        let (_, _, want) = fixture_png("sd-turbo-tiny-taesd.png");
        let diff = max_pixel_diff(&image.pixels, &want);
        assert!(diff <= 1, "TAESD swap on {}: {diff}", device_name(&device));
    }
}

#[test]
fn a_seed_gives_the_same_image_on_every_device() {
    let mut images = vec![];
    for device in devices() {
        let pipeline =
            Pipeline::from_files(snapshot_files("sdxl-turbo-tiny"), &device.device).unwrap();
        let req = Request {
            prompt: "a photo of a cat".into(),
            noise: None,
            seed: 7,
            steps: 2, // ancestral: the second step draws noise from the seed too
            height: Some(24),
            width: Some(32),
        };
        let a = pollster::block_on(pipeline.generate(&req)).unwrap();
        let b = pollster::block_on(pipeline.generate(&req)).unwrap();
        assert_eq!(a, b, "same seed, same device");
        let other = pollster::block_on(pipeline.generate(&Request { seed: 8, ..req })).unwrap();
        assert!(
            max_pixel_diff(&a.pixels, &other.pixels) > 10,
            "seeds must matter"
        );
        images.push(a);
    }
    assert!(max_pixel_diff(&images[0].pixels, &images[1].pixels) <= 1);
}

fn cpu() -> ComputeDevice {
    ComputeDevice::cpu()
}

fn tiny_request() -> Request {
    Request {
        prompt: "a cat".into(),
        noise: None,
        seed: 0,
        steps: 1,
        height: Some(32),
        width: Some(32),
    }
}

/// On devices whose largest buffer cannot hold the VAE's biggest activation (lavapipe binds at
/// most 128 MiB; SD's VAE at 512x512 holds a 256-channel 512x512 tensor of 256 MiB), the VAE
/// decodes in bands of rows: the same image as the whole decode.
#[test]
fn banded_vae_decoding_equals_the_whole_decode() {
    for device in devices() {
        let mut pipeline =
            Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &device.device).unwrap();
        let (h, w) = (7, 6);
        let need = pipeline.decoder.largest_activation_bytes(h, w);
        let values: Vec<f32> = (0..4 * h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let latents = tensor(values, [1, 4, h, w], &device.device);
        let whole = read(pipeline.decoder.decode(latents.clone(), None));
        for limit in [need - 1, need / 3, 2 * need.div_ceil(h as u64)] {
            let rows = pipeline.decoder.band_rows(h, w, Some(limit)).unwrap();
            assert!(rows.is_some_and(|r| r < h), "limit {limit}: {rows:?}");
            let banded = read(pipeline.decoder.decode(latents.clone(), Some(limit)));
            assert_close(
                &format!("bands of {rows:?} rows on {}", device_name(&device)),
                &banded,
                &whole,
                1e-5,
            );
        }
        // Too small even for one latent row per band: refused up front, sizes named.
        pipeline.set_buffer_limit(Some(16));
        let err = pipeline.prepare(&tiny_request()).unwrap_err().to_string();
        assert!(
            err.contains("buffer limit") && err.contains("32x32"),
            "{err}"
        );
        // TAESD does not band: over the limit it is refused.
        let taesd = LoadedDecoder::from_files(model_files("taesd"), None, &device.device).unwrap();
        let need = taesd.largest_activation_bytes(4, 4);
        pipeline.set_decoder(taesd);
        pipeline.set_buffer_limit(Some(need - 1));
        let err = pipeline.prepare(&tiny_request()).unwrap_err().to_string();
        assert!(err.contains("AutoencoderTiny"), "{err}");
        pipeline.set_buffer_limit(Some(need));
        assert!(pipeline.prepare(&tiny_request()).is_ok());
    }
    // The real SD VAE (block_out_channels 128, 256, 512, 512) for a 64x64 latent.
    let mut pipeline =
        Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &cpu().device).unwrap();
    pipeline.decoder.stage_channels = vec![512, 512, 256, 128];
    assert_eq!(pipeline.decoder.largest_activation_bytes(64, 64), 256 << 20);
    assert_eq!(
        pipeline.decoder.band_rows(64, 64, Some(128 << 20)).unwrap(),
        Some(16)
    );
}

#[test]
fn bad_requests_are_named() {
    let pipeline = Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &cpu().device).unwrap();
    let check = |req: Request, named: &str| {
        let err = pipeline.prepare(&req).unwrap_err();
        assert!(err.to_string().contains(named), "{named}: {err}");
    };
    check(
        Request {
            width: Some(36),
            ..tiny_request()
        },
        "width: 36 pixels: must be a positive multiple of 8",
    );
    check(
        Request {
            height: Some(0),
            ..tiny_request()
        },
        "height: 0 pixels",
    );
    check(
        Request {
            steps: 0,
            ..tiny_request()
        },
        "steps: 0",
    );
    // Sizes over the pixel budget are refused before any noise is drawn.
    check(
        Request {
            width: Some(1_000_000),
            height: Some(1_000_000),
            ..tiny_request()
        },
        "height: 1000000 pixels: the longest side Tastebud generates is 8192",
    );
    check(
        Request {
            width: Some(8192),
            height: Some(4104),
            ..tiny_request()
        },
        "width x height: 8192x4104 is 33619968 pixels, over the budget of 16777216",
    );
    check(
        Request {
            steps: 5,
            ..tiny_request()
        },
        "steps: 5",
    );
    let noise = |shape: Vec<usize>, v: f32| Noise {
        values: vec![v; shape.iter().product()],
        shape,
    };
    check(
        Request {
            noise: Some(noise(vec![1, 4, 5, 4], 0.0)),
            ..tiny_request()
        },
        "noise: shape [1, 4, 5, 4]; a 32x32 image needs [1, 4, 4, 4]",
    );
    check(
        Request {
            noise: Some(noise(vec![1, 4, 4, 4], f32::NAN)),
            ..tiny_request()
        },
        "noise: value 0 is NaN",
    );
    // Without an explicit size the noise decides it.
    let req = Request {
        noise: Some(noise(vec![1, 4, 3, 5], 0.5)),
        height: None,
        width: None,
        ..tiny_request()
    };
    let (h, w, _) = pipeline.prepare(&req).unwrap();
    assert_eq!((h, w), (24, 40));
}

#[test]
fn noise_files_are_checked() {
    let bytes = std::fs::read(fixtures().join("noise0.npy")).unwrap();
    let noise = Noise::from_bytes("noise0.npy", &bytes).unwrap();
    assert_eq!(noise.shape, vec![1, 4, 4, 7]);
    let err = Noise::from_bytes("cut.npy", &bytes[..bytes.len() - 4]).unwrap_err();
    assert!(
        err.to_string().contains("cut.npy") && err.to_string().contains("data bytes"),
        "{err}"
    );
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = Noise::from_bytes("nan.npy", &nan).unwrap_err();
    assert!(
        err.to_string().contains("nan.npy: noise value 111 is NaN"),
        "{err}"
    );
    let err = Noise::from_bytes("junk.bin", b"not noise at all").unwrap_err();
    assert!(err.to_string().contains("junk.bin"), "{err}");
}

fn broken(model: &str, edit: impl FnOnce(&mut ModelFiles)) -> Error {
    let mut files = snapshot_files(model);
    edit(&mut files);
    match Pipeline::from_files(files, &cpu().device) {
        Ok(_) => panic!("the broken snapshot loaded"),
        Err(e) => e,
    }
}

fn edit_json(files: &mut ModelFiles, name: &str, from: &str, to: &str) {
    let text = String::from_utf8(files.take(name).unwrap()).unwrap();
    assert!(text.contains(from), "{name} lacks {from}");
    files.insert(name, text.replace(from, to).into_bytes());
}

#[test]
fn broken_snapshots_are_named() {
    let err = broken("sd-turbo-tiny", |f| {
        f.take("unet/config.json");
    });
    assert!(
        err.to_string().contains("unet: missing file config.json"),
        "{err}"
    );
    let err = broken("sd-turbo-tiny", |f| {
        f.take("model_index.json");
    });
    assert!(
        err.to_string().contains("missing file model_index.json"),
        "{err}"
    );
    let err = broken("sd-turbo-tiny", |f| {
        edit_json(f, "model_index.json", "\"vae\": [", "\"vae_gone\": [")
    });
    assert!(err.to_string().contains("component `vae`"), "{err}");
    let err = broken("sd-turbo-tiny", |f| {
        edit_json(
            f,
            "model_index.json",
            "EulerDiscreteScheduler",
            "PNDMScheduler",
        )
    });
    assert!(
        err.to_string().contains("scheduler = PNDMScheduler"),
        "{err}"
    );
    let err = broken("sd-turbo-tiny", |f| {
        edit_json(
            f,
            "model_index.json",
            "StableDiffusionPipeline",
            "FluxPipeline",
        )
    });
    assert!(
        err.to_string().contains("_class_name = FluxPipeline"),
        "{err}"
    );
    // A text encoder from another model: 8 features per token for a UNet that attends to 32.
    let err = broken("sd-turbo-tiny", |f| {
        let mut other = snapshot_files("sd1-tiny").subfolder("text_encoder");
        for name in ["config.json", "model.safetensors"] {
            f.insert(format!("text_encoder/{name}"), other.take(name).unwrap());
        }
    });
    assert!(
        err.to_string()
            .contains("give 8 features per token; the UNet's cross_attention_dim is 32"),
        "{err}"
    );
    let err = broken("sd1-tiny", |f| {
        f.take("tokenizer/tokenizer.json");
    });
    assert!(
        err.to_string().contains("tokenizer.json or vocab.json"),
        "{err}"
    );
}
