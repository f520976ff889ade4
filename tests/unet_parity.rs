//! `UNet2DConditionModel` against diffusers for the three families (SD 1.x conv projections,
//! SD 2.x linear projections and per-block heads, SDXL text_time conditioning), on the inputs
//! each tiny pipeline fed its UNet, on flex and wgpu.

mod common;

use common::*;
use tastebud_core::Error;
use tastebud_core::models::unet::{TextTime, UNet, timestep_embedding};

fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

#[test]
fn unets_match_diffusers() {
    let reference = reference_json();
    let cases = reference["pipelines"].as_array().unwrap();
    for device in devices() {
        let d = &device.device;
        for (i, case) in cases.iter().enumerate() {
            let model = case["model"].as_str().unwrap();
            let unet = UNet::from_files(model_files(&format!("{model}/unet")), d).unwrap();
            let (sample, s) = reference_tensor(&format!("pipeline{i}.unet_input"));
            let (context, c) = reference_tensor(&format!("pipeline{i}.prompt_embeds"));
            let (want, _) = reference_tensor(&format!("pipeline{i}.unet_output"));
            let text_time = model.starts_with("sdxl").then(|| {
                let (pooled, p) = reference_tensor(&format!("pipeline{i}.pooled"));
                let (h, w) = (
                    case["height"].as_f64().unwrap(),
                    case["width"].as_f64().unwrap(),
                );
                TextTime {
                    text_embeds: tensor(pooled, [p[0], p[1]], d),
                    time_ids: vec![[h as f32, w as f32, 0.0, 0.0, h as f32, w as f32]],
                }
            });
            let out = unet
                .forward(
                    tensor(sample, dims4(&s), d),
                    case["timestep"].as_f64().unwrap() as f32,
                    &tensor(context, [c[0], c[1], c[2]], d),
                    text_time.as_ref(),
                )
                .unwrap();
            assert_eq!(out.dims(), dims4(&s));
            assert_close(
                &format!("{model} UNet (case {i}) on {}", device_name(&device)),
                &read(out),
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn timestep_embedding_puts_cos_first() {
    let e = timestep_embedding(&[0.0, 999.0], 8, true, 0.0);
    assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // frequency i = 10000^(-i/4): the last half of row 2 is sin(999 * f_i).
    let f1 = (-(10000f32.ln()) / 4.0).exp();
    assert!((e[8 + 5] - (999.0 * f1).sin()).abs() < 1e-6);
}

#[test]
fn wrong_inputs_are_named() {
    let device = tastebud_core::ComputeDevice::cpu().device;
    let unet = UNet::from_files(model_files("sdxl-turbo-tiny/unet"), &device).unwrap();
    let sample = tensor(vec![0.0; 4 * 30], [1, 4, 5, 6], &device);
    let context = tensor(vec![0.0; 77 * 24], [1, 77, 24], &device);
    // SDXL without its pooled text and time ids.
    let err = unet
        .forward(sample.clone(), 999.0, &context, None)
        .unwrap_err();
    assert!(err.to_string().contains("text_time"), "{err}");
    // Text of the wrong width.
    let narrow = tensor(vec![0.0; 77 * 8], [1, 77, 8], &device);
    let err = unet.forward(sample, 999.0, &narrow, None).unwrap_err();
    assert!(err.to_string().contains("[1, tokens, 24]"), "{err}");
}

#[test]
fn unsupported_configs_are_named() {
    let device = tastebud_core::ComputeDevice::cpu().device;
    for (from, to, named) in [
        (
            "\"time_cond_proj_dim\": null",
            "\"time_cond_proj_dim\": 256",
            "time_cond_proj_dim = 256",
        ),
        (
            "\"UpBlock2D\"",
            "\"SimpleUpBlock2D\"",
            "up_block_types = SimpleUpBlock2D",
        ),
        (
            "\"addition_embed_type\": \"text_time\"",
            "\"addition_embed_type\": \"image\"",
            "addition_embed_type = image",
        ),
        (
            "\"norm_num_groups\": 4",
            "\"norm_num_groups\": 3",
            "norm_num_groups = 3 does not divide 8",
        ),
    ] {
        let mut files = model_files("sdxl-turbo-tiny/unet");
        let config = String::from_utf8(files.take("config.json").unwrap()).unwrap();
        assert!(config.contains(from), "{from}");
        files.insert("config.json", config.replace(from, to).into_bytes());
        let err = UNet::from_files(files, &device).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported(_)) && err.to_string().contains(named),
            "{err}"
        );
    }
}
