//! Helpers shared by the integration tests: fixtures, references, devices, tolerances.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::SafeTensors;
use serde_json::Value;
use tastebud_core::burn::tensor::Device;
use tastebud_core::{ComputeDevice, DeviceChoice, ModelFiles, device};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every file of a fixture folder, as a front end would hand them over.
pub fn model_files(name: &str) -> ModelFiles {
    let dir = fixtures().join(name);
    let mut files = ModelFiles::new(dir.display().to_string());
    for entry in std::fs::read_dir(&dir).expect("fixture folder") {
        let entry = entry.expect("fixture entry");
        let file_name = entry.file_name().to_string_lossy().to_string();
        files.insert(
            file_name,
            std::fs::read(entry.path()).expect("fixture file"),
        );
    }
    files
}

/// A whole snapshot, files named by their path inside it (as `ModelIndex::files` names them).
pub fn snapshot_files(name: &str) -> ModelFiles {
    fn walk(dir: &std::path::Path, prefix: &str, files: &mut ModelFiles) {
        for entry in std::fs::read_dir(dir).expect("fixture folder") {
            let entry = entry.expect("fixture entry");
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.path().is_dir() {
                walk(&entry.path(), &format!("{name}/"), files);
            } else {
                files.insert(name, std::fs::read(entry.path()).expect("fixture file"));
            }
        }
    }
    let dir = fixtures().join(name);
    let mut files = ModelFiles::new(dir.display().to_string());
    walk(&dir, "", &mut files);
    files
}

/// An 8-bit RGB PNG from the fixtures: (width, height, pixels).
pub fn fixture_png(name: &str) -> (usize, usize, Vec<u8>) {
    let img = image::open(fixtures().join(name))
        .expect("fixture png")
        .to_rgb8();
    (img.width() as usize, img.height() as usize, img.into_raw())
}

/// Largest per-channel difference between two 8-bit images.
pub fn max_pixel_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// A `torch.save`-shaped archive (`archive/data.pkl`, `archive/byteorder`) around `pickle`.
pub fn torch_archive(pickle: &[u8]) -> Vec<u8> {
    torch_archive_with(pickle, &[])
}

/// The same with storages (`archive/data/KEY`), stored uncompressed as `torch.save` does.
pub fn torch_archive_with(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", options).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), options)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A pickle of lists nested `depth` deep (it once overflowed the native stack).
pub fn nested_lists_pickle(depth: usize) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b']', depth));
    p.extend(std::iter::repeat_n(b'a', depth - 1));
    p.push(b'.');
    p
}

pub fn reference_json() -> Value {
    let bytes = std::fs::read(fixtures().join("reference.json")).expect("reference.json");
    serde_json::from_slice(&bytes).expect("reference.json parses")
}

/// A reference tensor (f32) and its shape.
pub fn reference_tensor(name: &str) -> (Vec<f32>, Vec<usize>) {
    reference_tensor_in("reference.safetensors", name)
}

/// A reference tensor (f32) and its shape from a safetensors file under the fixtures.
pub fn reference_tensor_in(file: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixtures().join(file)).expect("reference safetensors file");
    let st = SafeTensors::deserialize(&bytes).expect("reference.safetensors parses");
    let view = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("reference tensor {name}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

/// The devices every numeric test runs on: flex (CPU) and wgpu (lavapipe here).
pub fn devices() -> Vec<ComputeDevice> {
    let gpu = pollster::block_on(device::open(DeviceChoice::Gpu))
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    vec![ComputeDevice::cpu(), gpu]
}

pub fn device_name(d: &ComputeDevice) -> String {
    d.describe()
}

pub fn read<const D: usize>(t: tastebud_core::burn::tensor::Tensor<D>) -> Vec<f32> {
    pollster::block_on(tastebud_core::read_f32(t)).expect("readback")
}

pub fn tensor<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> tastebud_core::burn::tensor::Tensor<D> {
    tastebud_core::burn::tensor::Tensor::from_data(
        tastebud_core::burn::tensor::TensorData::new(values, shape),
        device,
    )
}

/// `allclose` with atol = rtol * max|want|: |got - want| <= rtol * (|want| + max|want|), so that
/// entries near zero are judged against the tensor's magnitude rather than their own.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] is {g}");
        let err = (g - w).abs() / (w.abs() + scale);
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= rtol,
        "{what}: worst relative error {:.3e} at [{i}]: got {} want {}",
        worst.0,
        got[i],
        want[i]
    );
}

/// The shipped shapes generator (trained weights, channels that fill blocks) with every weight
/// file as `tastebud quantize` writes it (`kind`, nothing kept), and the same weights widened to
/// f32 safetensors.
pub fn quantized_snapshot(kind: tastebud_core::quant::QuantType) -> (ModelFiles, ModelFiles) {
    let mut packed = snapshot_files("../../models/shapes/generator");
    let mut widened = packed.clone();
    for (folder, name) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        let source = format!("{folder}/{name}.safetensors");
        let bytes = packed.take(&source).unwrap();
        widened.take(&source);
        let policy = tastebud_core::gguf::QuantPolicy {
            kind,
            keep: Vec::new(),
            mix: Vec::new(),
            scope: folder.to_string(),
        };
        let (file, _) =
            tastebud_core::gguf::quantize_weights(&source, &bytes, &policy, Vec::new()).unwrap();
        widened.insert(
            &source,
            tastebud_core::gguf::to_safetensors(&source, &file).unwrap(),
        );
        packed.insert(format!("{folder}/{name}.gguf"), file);
    }
    (packed, widened)
}
