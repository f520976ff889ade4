//! No file can make Tastebud allocate without bound, or read outside a model's folder, before
//! it is validated: each limit is named in its error (SECURITY.md lists them).

mod common;

use common::*;
use tastebud_core::files::MAX_JSON_BYTES;
use tastebud_core::manifest::Manifest;
use tastebud_core::pipeline::ModelIndex;
use tastebud_core::preprocess::{MAX_IMAGE_PIXELS, decode_image};
use tastebud_core::tokenizer::{ClipTokenizer, MAX_TOKENS};
use tastebud_core::{Error, ModelFiles};

/// A PNG declaring `width` x `height` 8-bit grey whose data is one compressed zero byte:
/// what a decompression bomb's first bytes look like.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    let mut writer = encoder.write_header().expect("header");
    // zlib's stream for the single byte 0.
    let idat = [0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01];
    writer.write_chunk(png::chunk::IDAT, &idat).expect("IDAT");
    drop(writer);
    bytes
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    // 12000 x 12000 is 144 Mpx: over the budget, under the per-side limit.
    let err = decode_image("bomb.png", &png_header(12_000, 12_000)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::BadImage { .. }), "{err:?}");
    assert!(
        text.contains("bomb.png") && text.contains(&MAX_IMAGE_PIXELS.to_string()),
        "{text}"
    );
    // A side past the limit is named as such.
    let text = decode_image("wide.png", &png_header(20_000, 1))
        .unwrap_err()
        .to_string();
    assert!(text.contains("20000x1") && text.contains("16384"), "{text}");
    // A header that declares a small picture whose data is missing is a decode error.
    let text = decode_image("empty.png", &png_header(8, 8))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("empty.png") && text.contains("cannot decode"),
        "{text}"
    );
}

#[test]
fn oversized_configuration_files_are_refused_before_parsing() {
    let mut files = ModelFiles::new("huge");
    let mut json = b"{\"a\": \"".to_vec();
    json.resize(MAX_JSON_BYTES + 1, b'x');
    files.insert("config.json", json);
    let err = files.json::<serde_json::Value>("config.json").unwrap_err();
    assert!(
        err.to_string().contains(&MAX_JSON_BYTES.to_string()),
        "{err}"
    );
}

#[test]
fn tokenizer_lengths_are_bounded_and_empty_encodings_refused() {
    let tokenizer_json = std::fs::read(fixtures().join("clip-openai/tokenizer.json")).unwrap();
    let with_config = |config: &str| {
        let mut files = ModelFiles::new("tok");
        files.insert("tokenizer.json", tokenizer_json.clone());
        files.insert("tokenizer_config.json", config.as_bytes().to_vec());
        ClipTokenizer::from_files(&files)
    };
    // A length the text tower could never take (it would be padded to in memory).
    let err = with_config(r#"{"model_max_length": 1e20}"#).err().unwrap();
    assert!(
        err.to_string().contains("model_max_length")
            && err.to_string().contains(&MAX_TOKENS.to_string()),
        "{err}"
    );
    // transformers' "no limit" marker still means CLIP's 77.
    let tokenizer = with_config(r#"{"model_max_length": 1e30}"#).unwrap();
    assert_eq!(tokenizer.encode("a cat", false).unwrap().ids.len(), 77);

    // A tokenizer.json without its post-processor adds no start/end tokens: the empty prompt
    // then has no tokens at all, which is refused rather than indexed.
    let mut json: serde_json::Value = serde_json::from_slice(&tokenizer_json).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    let mut files = ModelFiles::new("tok");
    files.insert("tokenizer.json", serde_json::to_vec(&json).unwrap());
    let tokenizer = ClipTokenizer::from_files(&files).unwrap();
    let err = tokenizer.encode("", false).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
}

#[test]
fn model_files_never_come_from_paths_a_file_names() {
    // model_index.json's class names pick file names from fixed lists; the component folders
    // are the pipeline's own. A path-like entry reads nothing outside the snapshot.
    let index = br#"{
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "../../../etc/passwd"],
        "vae": ["diffusers", "/etc/passwd"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "../outside": ["diffusers", "UNet2DConditionModel"]
    }"#;
    let files = ModelIndex::parse("model_index.json", index)
        .unwrap()
        .files();
    for name in files.iter().flatten() {
        assert!(!name.contains(".."), "{name}");
        assert!(!name.starts_with('/'), "{name}");
        let component = name.split('/').next().unwrap();
        assert!(
            ["unet", "vae", "text_encoder", "tokenizer", "scheduler"].contains(&component),
            "{name}"
        );
    }
    // A manifest (the shipped models', or a user model's in the browser) cannot name one.
    let manifest = format!(
        r#"{{"files": [{{"file": "../../secret", "bytes": 1, "sha256": "{}"}}]}}"#,
        "0".repeat(64)
    );
    let err = Manifest::from_json("manifest.json", manifest.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("../../secret"), "{err}");
}

#[test]
fn fuzz_findings_are_refused_by_name() {
    let finding = |target: &str, name: &str| {
        std::fs::read(fixtures().join("../fuzz/findings").join(target).join(name)).unwrap()
    };
    // A .npy shape whose element count overflows (it wrapped to the data's length before).
    let bytes = finding("noise", "shape-product-overflow.npy");
    let err = tastebud_core::noise::Noise::from_bytes("noise.npy", &bytes).unwrap_err();
    assert!(
        err.to_string().contains("noise.npy") && err.to_string().contains("more elements"),
        "{err}"
    );
    // A GGUF tensor with a zero dimension ahead of two huge ones: a plain product overflowed.
    let bytes = finding("gguf", "zero-dimension-product-overflow.gguf");
    let read = tastebud_core::gguf::read_weights("f.gguf", &bytes).unwrap();
    let shapes: Vec<_> = read
        .dense
        .iter()
        .map(|(k, v)| (k.as_str(), v.shape.clone()))
        .collect();
    assert_eq!(shapes, [("", vec![])]);
    assert!(read.blocks.is_empty());
}

#[test]
fn a_tokenizer_json_with_a_syntax_error_is_an_error_not_a_panic() {
    // tokenizers 0.22 panics ("Helper") on a syntax error inside `decoder`.
    let bytes = std::fs::read(
        fixtures()
            .join("../fuzz/findings/tokenizer_json/decoder-syntax-error-panics-in-tokenizers"),
    )
    .unwrap();
    let mut files = ModelFiles::new("tok");
    files.insert("tokenizer.json", bytes);
    let err = ClipTokenizer::from_files(&files).err().unwrap();
    assert!(err.to_string().contains("tok/tokenizer.json"), "{err}");
}
