//! ggml's block formats and GGUF files against the `gguf` Python package (0.19,
//! `tests/reference/make_gguf_fixtures.py`): quantizing the fixture's values gives its blocks
//! byte for byte and dequantizing its blocks gives its values bit for bit (Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1); a file `GGUFWriter` wrote reads back with its metadata and tensors, and
//! Tastebud writes the same content to the same bytes; damaged files are named, not trusted.
//! UNet files in the original LDM names, as stable-diffusion.cpp and ComfyUI-GGUF write them
//! (`tests/reference/make_ldm_gguf_fixtures.py`), draw diffusers' picture.

mod common;

use common::*;
use safetensors::SafeTensors;
use tastebud_core::gguf::{self, GgufFile, TensorData, TensorType, Value};
use tastebud_core::noise::Noise;
use tastebud_core::pipeline::{Pipeline, Request};
use tastebud_core::quant::{QuantType, dequantize, quantize};

#[test]
fn blocks_match_the_gguf_package_bit_for_bit() {
    let bytes = std::fs::read(fixtures().join("gguf/quants.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (values, _) = reference_tensor_in("gguf/quants.safetensors", "values");
    assert_eq!(values.len(), 135 * 32);
    for kind in QuantType::ALL {
        let want = st.tensor(kind.name()).unwrap().data().to_vec();
        let got = quantize("values", &values, kind).unwrap();
        assert_eq!(got.len(), want.len(), "{kind:?}");
        let block = kind.block_bytes();
        for (i, (g, w)) in got.chunks(block).zip(want.chunks(block)).enumerate() {
            assert_eq!(
                g,
                w,
                "{kind:?}: block {i} differs from gguf's ({:?})",
                &values[i * 32..i * 32 + 32]
            );
        }
        let (dequantized, _) = reference_tensor_in(
            "gguf/quants.safetensors",
            &format!("{}.dequantized", kind.name()),
        );
        let back = dequantize("blocks", &want, kind).unwrap();
        for (i, (g, w)) in back.iter().zip(&dequantized).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{kind:?}: value {i}: {g} vs gguf's {w}"
            );
        }
    }
}

fn tiny() -> Vec<u8> {
    std::fs::read(fixtures().join("gguf/tiny.gguf")).unwrap()
}

#[test]
fn a_gguf_writer_file_reads_and_is_written_back_byte_for_byte() {
    let bytes = tiny();
    let file = GgufFile::parse("tiny.gguf", &bytes).unwrap();
    assert_eq!(
        file.metadata("general.architecture")
            .and_then(Value::as_str),
        Some("tastebud-test")
    );
    assert_eq!(file.metadata("test.count"), Some(&Value::U32(7)));
    assert_eq!(file.metadata("test.scale"), Some(&Value::F32(0.5)));
    assert_eq!(file.metadata("test.flag"), Some(&Value::Bool(true)));
    assert_eq!(
        file.metadata("test.names"),
        Some(&Value::Array(
            8,
            vec![Value::String("a".into()), Value::String("bc".into())]
        ))
    );
    let (values, _) = reference_tensor_in("gguf/quants.safetensors", "values");
    let (q8, _) = reference_tensor_in("gguf/quants.safetensors", "q8_0.dequantized");
    let (q4, _) = reference_tensor_in("gguf/quants.safetensors", "q4_0.dequantized");
    let expect: [(&str, Vec<usize>, TensorType, Vec<f32>); 4] = [
        (
            "w.f32",
            vec![2, 3],
            TensorType::F32,
            (0..6).map(|i| i as f32 / 4.0).collect(),
        ),
        (
            "w.f16",
            vec![4],
            TensorType::F16,
            vec![1.5, -2.0, 0.25, half::f16::from_f32(1e-3).to_f32()],
        ),
        (
            "w.q8_0",
            vec![2, 64],
            TensorType::Quant(QuantType::Q8_0),
            q8[..128].to_vec(),
        ),
        (
            "w.q4_0",
            vec![32],
            TensorType::Quant(QuantType::Q4_0),
            q4[128..160].to_vec(),
        ),
    ];
    assert_eq!(file.tensors.len(), 4);
    let mut written = Vec::new();
    for (name, shape, kind, want) in expect {
        let info = file.tensor(name).unwrap();
        assert_eq!((&info.shape, info.kind), (&shape, kind), "{name}");
        assert_eq!(file.values(info).unwrap(), want, "{name}");
        let stored = match kind {
            TensorType::Quant(q) => {
                let from = if name == "w.q8_0" { 0 } else { 128 };
                quantize(name, &values[from..from + want.len()], q).unwrap()
            }
            _ => file.raw(info).to_vec(),
        };
        written.push(TensorData {
            name: name.into(),
            shape,
            kind,
            bytes: stored,
        });
    }
    let again = gguf::write(&file.metadata, &written).unwrap();
    assert_eq!(again.len(), bytes.len());
    assert!(again == bytes, "Tastebud's GGUF differs from GGUFWriter's");
}

#[test]
fn damaged_gguf_files_are_named() {
    let bytes = tiny();
    let err = |b: &[u8]| GgufFile::parse("bad.gguf", b).unwrap_err().to_string();
    // Truncated anywhere: header, metadata, tensor infos, data.
    // (the last 14 bytes are padding after the last tensor: a file may end without them)
    for cut in [3, 20, 100, 300, bytes.len() - 16] {
        let e = err(&bytes[..cut]);
        assert!(e.contains("bad.gguf"), "cut at {cut}: {e}");
    }
    assert!(err(b"GGML0000").contains("not a GGUF file"));
    // A metadata array that claims more elements than the file holds (an allocation bomb).
    let mut bomb = bytes.clone();
    let at = bytes.windows(10).position(|w| w == b"test.names").unwrap() + 10 + 4 + 4;
    bomb[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(
        err(&bomb).contains("an array of 1152921504606846976 elements"),
        "{}",
        err(&bomb)
    );
    // A tensor type Tastebud does not read, named.
    let mut odd = bytes.clone();
    let at = bytes.windows(5).position(|w| w == b"w.f16").unwrap() + 5 + 4 + 8;
    odd[at..at + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K
    assert!(
        err(&odd).contains("tensor w.f16 has ggml type 12"),
        "{}",
        err(&odd)
    );
    // Data beyond the end of the file.
    let mut far = bytes.clone();
    let at = bytes.windows(5).position(|w| w == b"w.f16").unwrap() + 5 + 4 + 8 + 4;
    far[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&far).contains("tensor w.f16"), "{}", err(&far));
    // Rows that do not fill whole blocks are refused on write too.
    let e = gguf::write(
        &[],
        &[TensorData {
            name: "w".into(),
            shape: vec![3, 20],
            kind: TensorType::Quant(QuantType::Q8_0),
            bytes: vec![0; 34],
        }],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("do not hold a q8_0 tensor of shape [3, 20]"),
        "{e}"
    );
}

/// The tiny SD-Turbo with its UNet weights replaced by an LDM-named GGUF file (as a user drops
/// stable-diffusion.cpp's or ComfyUI-GGUF's file into a diffusers snapshot's `unet/`): its
/// picture against diffusers' from the original weights, within `tolerance` levels.
fn ldm_unet_draws_diffusers_picture(fixture: &str, tolerance: u8) {
    let case = &reference_json()["pipelines"][1];
    assert_eq!(case["model"], "sd-turbo-tiny");
    let mut files = snapshot_files("sd-turbo-tiny");
    files
        .take("unet/diffusion_pytorch_model.safetensors")
        .expect("the fixture's UNet weights");
    let ldm = std::fs::read(fixtures().join("gguf").join(fixture)).unwrap();
    files.insert("unet/diffusion_pytorch_model.gguf", ldm);
    let noise_file = case["noise"].as_str().unwrap();
    let noise = std::fs::read(fixtures().join(noise_file)).unwrap();
    let request = Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        noise: Some(Noise::from_bytes(noise_file, &noise).unwrap()),
        seed: 0,
        steps: 1,
        height: Some(case["height"].as_u64().unwrap() as usize),
        width: Some(case["width"].as_u64().unwrap() as usize),
    };
    let (_, _, want) = fixture_png(case["image"].as_str().unwrap());
    for device in devices() {
        let pipeline = Pipeline::from_files(files.clone(), &device.device).unwrap();
        let image = pollster::block_on(pipeline.generate(&request)).unwrap();
        let diff = max_pixel_diff(&image.pixels, &want);
        assert!(
            diff <= tolerance,
            "{fixture} on {}: differs from diffusers by {diff}",
            device_name(&device)
        );
    }
}

#[test]
fn stable_diffusion_cpp_unet_files_load_by_ldm_names() {
    // f16 weights, whole-checkpoint keys (`model.diffusion_model.`, a VAE tensor left unused).
    ldm_unet_draws_diffusers_picture("sd-turbo-tiny-unet-sdcpp.gguf", 1);
}

#[test]
fn comfyui_gguf_unet_files_load_by_ldm_names() {
    // Bare LDM keys; 141 tensors stored as [n / 256, 256] Q8_0 with comfy.gguf.orig_shape.
    ldm_unet_draws_diffusers_picture("sd-turbo-tiny-unet-comfy.gguf", 2);
}

#[test]
fn an_ldm_unet_file_missing_a_tensor_names_it() {
    let bytes = std::fs::read(fixtures().join("gguf/sd-turbo-tiny-unet-sdcpp.gguf")).unwrap();
    let file = GgufFile::parse("sdcpp.gguf", &bytes).unwrap();
    // The first up block's upsampler: LDM's `output_blocks.2.1.conv` (no attention there).
    let tensors: Vec<TensorData> = file
        .tensors
        .iter()
        .filter(|t| t.name != "model.diffusion_model.output_blocks.2.1.conv.weight")
        .map(|t| TensorData {
            name: t.name.clone(),
            shape: t.shape.clone(),
            kind: t.kind,
            bytes: file.raw(t).to_vec(),
        })
        .collect();
    assert_eq!(tensors.len() + 1, file.tensors.len());
    let mut files = snapshot_files("sd-turbo-tiny");
    files.take("unet/diffusion_pytorch_model.safetensors");
    files.insert(
        "unet/diffusion_pytorch_model.gguf",
        gguf::write(&file.metadata, &tensors).unwrap(),
    );
    let device = &devices()[0];
    let Err(err) = Pipeline::from_files(files, &device.device) else {
        panic!("a UNet file without its upsampler loaded");
    };
    let err = err.to_string();
    assert!(
        err.contains("diffusion_pytorch_model.gguf")
            && err.contains("up_blocks.0.upsamplers.0.conv.weight"),
        "{err}"
    );
}

/// A tensor stored flattened gets its recorded shape back (ComfyUI-GGUF's int32 list here);
/// a recorded shape that does not fit the values, or is not a list, is named.
#[test]
fn recorded_shapes_are_restored_or_named() {
    let values: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tensor = || TensorData {
        name: "w".into(),
        shape: vec![2, 32],
        kind: TensorType::F32,
        bytes: values.clone(),
    };
    let dims = |d: &[i32]| Value::Array(5, d.iter().map(|&x| Value::I32(x)).collect());
    let file = |meta: Value| {
        gguf::write(
            &[("comfy.gguf.orig_shape.w".to_string(), meta)],
            &[tensor()],
        )
        .unwrap()
    };
    let st = gguf::to_safetensors("ok.gguf", &file(dims(&[2, 4, 8]))).unwrap();
    let header = tastebud_core::weights::inspect("ok.gguf", &st).unwrap();
    assert_eq!(header["w"].shape, vec![2, 4, 8]);

    let err = gguf::to_safetensors("bad.gguf", &file(dims(&[3, 7])))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.gguf")
            && err.contains("comfy.gguf.orig_shape.w")
            && err.contains("64 values"),
        "{err}"
    );
    let err = gguf::to_safetensors("odd.gguf", &file(Value::U32(64)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd.gguf") && err.contains("not a list of dimensions"),
        "{err}"
    );
}
