//! Half precision (`--dtype f16`): the same tiny pipeline, rewards and ReNO with weights and
//! activations in f16, against the f32 PyTorch references within what f16 can hold, on flex and
//! wgpu (lavapipe). Its own test binary: burn fixes a device's precision once per process.

mod common;

use std::sync::OnceLock;

use common::*;
use pollster::block_on;
use tastebud_core::burn::tensor::{DType, Tensor, TensorData};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{Pipeline, Request};
use tastebud_core::reno::{Flow, NoiseObjective, RenoConfig, reno};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};
use tastebud_core::{ComputeDevice, Error, Precision};

/// flex and wgpu, both switched to f16 once for the whole binary.
fn f16_devices() -> Vec<ComputeDevice> {
    static SWITCHED: OnceLock<()> = OnceLock::new();
    let mut devices = devices();
    SWITCHED.get_or_init(|| {
        for d in &mut devices {
            d.set_precision(Precision::F16)
                .expect("f16 is supported here");
        }
    });
    devices
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn weights_inputs_and_results_are_f16() {
    for mut device in f16_devices() {
        let on = device_name(&device);
        assert_eq!(device.precision(), Precision::F16, "{on}");
        assert!(on.contains("f16"), "{on}");
        // Asking again for f16 is fine; going back to f32 is refused with the reason.
        device
            .set_precision(Precision::F16)
            .expect("same precision");
        let err = device
            .set_precision(Precision::F32)
            .expect_err("precision is fixed");
        assert!(
            matches!(err, Error::Device { .. }) && err.to_string().contains("initialized"),
            "{err}"
        );
        let pipeline =
            Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &device.device).unwrap();
        assert_eq!(
            pipeline.unet.model.conv_in.weight().dtype(),
            DType::F16,
            "{on}"
        );
        // Decoder activations take half the bytes: the real SD VAE's largest (256 channels at
        // 512x512) is 128 MiB, so a 128 MiB buffer limit needs no bands in f16.
        let mut decoder = pipeline.decoder;
        decoder.stage_channels = vec![512, 512, 256, 128];
        assert_eq!(decoder.largest_activation_bytes(64, 64), 128 << 20, "{on}");
        assert_eq!(decoder.band_rows(64, 64, Some(128 << 20)).unwrap(), None);
        let x = Tensor::<1>::from_data(TensorData::new(vec![1.5f32, -2.25], [2]), &device.device);
        assert_eq!(x.dtype(), DType::F16);
        // Results come back as f32 whatever the device computes in.
        assert_eq!(read(x), vec![1.5, -2.25]);
    }
}

#[test]
fn generation_in_f16_matches_diffusers_f32_image() {
    let case = &reference_json()["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "sd-turbo-tiny")
        .unwrap()
        .clone();
    let noise_file = case["noise"].as_str().unwrap();
    let request = Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        noise: Some(
            Noise::from_bytes(
                noise_file,
                &std::fs::read(fixtures().join(noise_file)).unwrap(),
            )
            .unwrap(),
        ),
        seed: 0,
        steps: case["steps"].as_u64().unwrap() as usize,
        height: Some(case["height"].as_u64().unwrap() as usize),
        width: Some(case["width"].as_u64().unwrap() as usize),
    };
    for device in f16_devices() {
        let on = device_name(&device);
        let pipeline =
            Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &device.device).unwrap();
        let image = block_on(pipeline.generate(&request)).unwrap();
        let (_, _, want) = fixture_png(case["image"].as_str().unwrap());
        // f16 keeps 11 significant bits: a few levels of 255 after a UNet and a VAE.
        let diff = max_pixel_diff(&image.pixels, &want);
        let mean = image
            .pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| f32::from(a.abs_diff(*b)))
            .sum::<f32>()
            / want.len() as f32;
        assert!(
            diff <= 6 && mean < 1.0,
            "{on}: max diff {diff}, mean {mean}"
        );
    }
}

/// Quantized weights kept packed on an f16 device: scales in f16 (exact: ggml's scales are
/// f16), each weight rebuilt in f16, the picture as the same weights widened on load draw it.
#[test]
fn packed_weights_compute_in_f16() {
    let (packed, widened) = quantized_snapshot(tastebud_core::quant::QuantType::Q8_0);
    let request = Request {
        prompt: "a red circle".into(),
        noise: None,
        seed: 0,
        steps: 1,
        height: Some(64),
        width: Some(64),
    };
    for device in f16_devices() {
        let on = device_name(&device);
        let at_rest = Pipeline::from_files(packed.clone(), &device.device).unwrap();
        let dense = Pipeline::from_files(widened.clone(), &device.device).unwrap();
        let unet = &at_rest.unet.model;
        assert!(
            tastebud_core::models::packed::packed_layers(unet) > 20,
            "{on}"
        );
        // The weights themselves are the same f16 values either way.
        let pairs = [
            (
                unet.down_blocks[0].resnets[0]
                    .conv1
                    .weight()
                    .flatten::<1>(0, 3),
                dense.unet.model.down_blocks[0].resnets[0]
                    .conv1
                    .weight()
                    .flatten(0, 3),
            ),
            (
                unet.time_embedding.linear_2.weight().flatten(0, 1),
                dense
                    .unet
                    .model
                    .time_embedding
                    .linear_2
                    .weight()
                    .flatten(0, 1),
            ),
        ];
        for (packed, widened) in pairs {
            assert_eq!(packed.dtype(), DType::F16, "{on}");
            let bits = |t: Tensor<1>| -> Vec<u16> {
                let data = block_on(t.into_data_async()).unwrap();
                data.convert::<half::f16>()
                    .try_to_vec::<half::f16>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(packed), bits(widened), "{on}: packed weight differs");
        }
        let a = block_on(at_rest.generate(&request)).unwrap();
        let b = block_on(dense.generate(&request)).unwrap();
        // The products are taken in another order (a transposed weight view), which f16's
        // 11 bits show after a UNet and a VAE: a few levels, as against diffusers' f32 above.
        let diff = max_pixel_diff(&a.pixels, &b.pixels);
        assert!(
            diff <= 4,
            "{on}: packed and widened f16 pictures differ by {diff}"
        );
    }
}

const HEAD: &str = "sac+logos+ava1-l14-linearMSE.pth";

fn reward_set(device: &tastebud_core::burn::tensor::Device) -> RewardSet {
    let mut aesthetic = model_files("clip-openai");
    let head = std::fs::read(fixtures().join("rewards/aesthetic-head").join(HEAD)).unwrap();
    aesthetic.insert(HEAD, head);
    let terms = [
        (RewardKind::Clip, model_files("clip-openai"), 0.1),
        (RewardKind::Aesthetic, aesthetic, 1.0),
    ]
    .into_iter()
    .map(|(kind, files, weight)| RewardTerm {
        label: kind.name().into(),
        reward: rewards::load(kind, files, device).unwrap(),
        weight,
    })
    .collect();
    RewardSet::new(terms).unwrap()
}

/// ReNO in f16: the first gradient points where PyTorch's f32 one does, and the trajectory
/// stays within f16's reach of the reference's rewards while it improves them.
#[test]
fn reno_in_f16_follows_the_f32_reference() {
    let reference = |name: &str| reference_tensor_in("reno/reference.safetensors", name).0;
    let start = reference("noise");
    for device in f16_devices() {
        let on = device_name(&device);
        let ad = device.device.clone().autodiff();
        let pipeline = Pipeline::from_files(snapshot_files("sd-turbo-tiny"), &ad).unwrap();
        let mut rewards = reward_set(&ad);
        let objective = NoiseObjective::new(
            &pipeline,
            &mut rewards,
            "a photo of a cat",
            &[1, 4, 6, 5],
            1,
            0,
        )
        .unwrap();
        let g = block_on(objective.evaluate(&start, true))
            .unwrap()
            .gradient
            .unwrap();
        let d = start.len() as f32;
        let n2: f32 = start.iter().map(|v| v * v).sum();
        let with_prior: Vec<f32> = g
            .iter()
            .zip(&start)
            .map(|(gi, zi)| gi + 0.01 * (1.0 - (d - 1.0) / n2) * zi)
            .collect();
        let c = cosine(&with_prior, &reference("sgd.first_grad"));
        assert!(c > 0.99, "{on}: gradient cosine {c}");

        let config = RenoConfig {
            iterations: 10,
            grad_clip: 0.025,
            ..RenoConfig::default()
        };
        let out = block_on(reno(
            &objective,
            Noise {
                values: start.clone(),
                shape: vec![1, 4, 6, 5],
            },
            &config,
            &mut |_, _| Flow::Continue,
        ))
        .unwrap();
        assert!(out.stopped.is_none(), "{on}: {:?}", out.stopped);
        let losses: Vec<f32> = out.trajectory.iter().map(|i| i.reward_loss).collect();
        let want = reference("sgd.reward_loss");
        for (i, (got, want)) in losses.iter().zip(&want).enumerate() {
            // The loss is ~19.5 and moves ~1e-2 per step; f16 resolves ~1e-2 at that size.
            assert!(
                (got - want).abs() < 3e-2,
                "{on} [{i}]: loss {got} vs {want}"
            );
        }
        assert!(
            losses[9] < losses[0] - 0.5 * (want[0] - want[9]),
            "{on}: f16 ReNO did not improve the loss like f32 ({losses:?} vs {want:?})"
        );
    }
}
