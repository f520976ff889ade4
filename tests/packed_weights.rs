//! Quantized weights kept quantized on the device (#18): ggml blocks unpack in the graph
//! bit for bit as `quant::dequantize` (which matches the `gguf` package, `gguf_parity`), on
//! flex and wgpu; the shipped shapes generator, `tastebud quantize`d, keeps its layers packed and
//! draws the picture its weights widened on load draw; ReNO's gradient flows through packed
//! layers and steers it.

mod common;

use common::*;
use pollster::block_on;
use tastebud_core::burn::tensor::{DType, Int, Tensor, TensorData};
use tastebud_core::models::packed::{packed_layers, unpack};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{Decoder, Pipeline, Request};
use tastebud_core::quant::{QuantType, dequantize, pack, quantize};
use tastebud_core::reno::{NoiseObjective, RenoConfig};
use tastebud_core::rewards::{self, RewardKind, RewardSet, RewardTerm};

#[test]
fn blocks_unpack_on_the_device_bit_for_bit() {
    let (values, _) = reference_tensor_in("gguf/quants.safetensors", "values");
    let rows = values.len() / 32;
    for device in devices() {
        for kind in QuantType::ALL {
            let blocks = quantize("values", &values, kind).unwrap();
            let want = dequantize("blocks", &blocks, kind).unwrap();
            let packed = pack("blocks", &blocks, kind).unwrap();
            let n = packed.words.len() / packed.words_per_block;
            let words = Tensor::<2, Int>::from_data(
                TensorData::new(packed.words, [n, packed.words_per_block]),
                (&device.device, DType::I32),
            );
            let scales = tensor(packed.scales, [n, packed.scales_per_block], &device.device);
            let got = read(unpack(words, scales, [rows, 32]));
            let differ = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(
                differ,
                None,
                "{kind:?} on {}: value differs from quant::dequantize",
                device_name(&device)
            );
        }
    }
}

fn request() -> Request {
    Request {
        prompt: "a red circle to the left of a blue square".into(),
        noise: None,
        seed: 7,
        steps: 1,
        height: Some(64),
        width: Some(64),
    }
}

fn decoder_packed(pipeline: &Pipeline) -> usize {
    match &pipeline.decoder.decoder {
        Decoder::Kl(vae) => packed_layers(vae.as_ref()),
        Decoder::Tiny(taesd) => packed_layers(taesd.as_ref()),
    }
}

#[test]
fn a_quantized_snapshot_stays_packed_and_draws_its_widened_picture() {
    for kind in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q5_1] {
        let (packed, widened) = quantized_snapshot(kind);
        for device in devices() {
            let at_rest = Pipeline::from_files(packed.clone(), &device.device).unwrap();
            let dense = Pipeline::from_files(widened.clone(), &device.device).unwrap();
            // Every layer whose rows fill blocks: all but the first convolutions (4 x 9 inputs).
            let unet = packed_layers(&at_rest.unet.model);
            assert!(unet > 100, "{kind:?}: only {unet} UNet layers packed");
            assert_eq!(packed_layers(&dense.unet.model), 0);
            let decoder = decoder_packed(&at_rest);
            assert!(
                decoder > 10,
                "{kind:?}: only {decoder} decoder layers packed"
            );
            let a = block_on(at_rest.generate(&request())).unwrap();
            let b = block_on(dense.generate(&request())).unwrap();
            let diff = max_pixel_diff(&a.pixels, &b.pixels);
            assert!(
                diff <= 1,
                "{kind:?} on {}: packed and widened pictures differ by {diff}",
                device_name(&device)
            );
        }
    }
}

#[test]
fn reno_steers_a_packed_generator() {
    let (packed, widened) = quantized_snapshot(QuantType::Q8_0);
    let device = tastebud_core::ComputeDevice::cpu().device.autodiff();
    let reward = |device| {
        let terms = vec![RewardTerm {
            label: "clip".into(),
            reward: rewards::load(
                RewardKind::Clip,
                model_files("../../models/shapes/clip"),
                device,
            )
            .unwrap(),
            weight: 1.0,
        }];
        RewardSet::new(terms).unwrap()
    };
    let noise = Noise::from_seed(3, &[1, 4, 16, 16]);
    let mut gradients = Vec::new();
    for files in [packed, widened] {
        let pipeline = Pipeline::from_files(files, &device).unwrap();
        let mut rewards = reward(&device);
        let objective = NoiseObjective::new(
            &pipeline,
            &mut rewards,
            "a red circle",
            &[1, 4, 16, 16],
            1,
            0,
        )
        .unwrap();
        let g = block_on(objective.evaluate(&noise.values, true))
            .unwrap()
            .gradient
            .unwrap();
        assert!(g.iter().any(|v| *v != 0.0), "no gradient reached the noise");
        let config = RenoConfig {
            iterations: 4,
            ..RenoConfig::default()
        };
        let out = block_on(tastebud_core::reno::reno(
            &objective,
            noise.clone(),
            &config,
            &mut |_, _| tastebud_core::reno::Flow::Continue,
        ))
        .unwrap();
        let first = out.trajectory[0].reward_loss;
        let best = out.best().unwrap().reward_loss;
        assert!(
            best < first,
            "ReNO did not lower the loss: {first} -> {best}"
        );
        gradients.push(g);
    }
    assert_close(
        "packed vs widened gradient",
        &gradients[0],
        &gradients[1],
        1e-4,
    );
}

#[test]
fn quantized_weights_of_another_model_are_named() {
    let (mut packed, _) = quantized_snapshot(QuantType::Q4_0);
    let unet = packed
        .take("unet/diffusion_pytorch_model.gguf")
        .expect("the quantized UNet");
    let mut files = snapshot_files("sd-turbo-tiny");
    files.take("unet/diffusion_pytorch_model.safetensors");
    files.insert("unet/diffusion_pytorch_model.gguf", unet);
    let device = &devices()[0];
    let Err(err) = Pipeline::from_files(files, &device.device) else {
        panic!("the shapes UNet's blocks loaded into the tiny UNet");
    };
    let err = err.to_string();
    assert!(
        err.contains("diffusion_pytorch_model.gguf")
            && err.contains(".weight")
            && err.contains("shape"),
        "{err}"
    );
}
