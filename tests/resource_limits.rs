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

/// A fuzz finding kept as a regression input (tests/fuzz/findings/TARGET/NAME).
fn finding(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("../fuzz/findings").join(target).join(name)).unwrap()
}

#[test]
fn fuzz_findings_are_refused_by_name() {
    // A .npy shape whose element count overflows (it wrapped to the data's length before).
    let bytes = finding("noise", "shape-product-overflow.npy");
    let err = tastebud_core::noise::Noise::from_bytes("noise.npy", &bytes).unwrap_err();
    assert!(
        err.to_string().contains("noise.npy") && err.to_string().contains("more elements"),
        "{err}"
    );
    // A GGUF tensor with a zero dimension behind two huge ones: a plain product of its
    // shape overflowed. (The fuzzer's file also names a tensor twice, refused since.)
    let bytes = finding("gguf", "zero-dimension-product-overflow.gguf");
    let err = tastebud_core::gguf::read_weights("f.gguf", &bytes).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let empty = gguf_file(&[("e", &[0, 1 << 40, 1 << 40], 0)], &[]);
    let read = tastebud_core::gguf::read_weights("f.gguf", &empty).unwrap();
    assert_eq!(read.dense["e"].shape, [1 << 40, 1 << 40, 0]);
    assert!(read.dense["e"].data.is_empty());
    // Re-serialised for the loaders, the same shape overflowed inside the safetensors crate's
    // `TensorView::new` (unchecked product); it is refused by name before that.
    for bytes in [
        empty,
        finding("gguf", "zero-element-shape-overflows-safetensors-view.gguf"),
    ] {
        let err = tastebud_core::gguf::to_safetensors("f.gguf", &bytes).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }
    // The aliased tensors and the zero-stride checkpoint (below) are refused by name.
    let bytes = finding("gguf", "aliased-tensors-widen-without-bound.gguf");
    let err = tastebud_core::gguf::read_weights("f.gguf", &bytes).unwrap_err();
    assert!(err.to_string().contains("share data bytes"), "{err}");
    let bytes = finding(
        "torch_pickle",
        "zero-stride-view-repeats-one-value-1-gib.pt",
    );
    let err = tastebud_core::torch_pickle::read_checkpoint("z.pt", &bytes).unwrap_err();
    assert!(err.to_string().contains("zero strides"), "{err}");
}

#[test]
fn tokenizer_json_that_tokenizers_would_panic_on_is_an_error() {
    // tokenizers 0.22 `expect`s while reading a `decoder` (a syntax error, a string that is not
    // UTF-8) and a `Precompiled` normalizer; each is refused before it sees the file.
    for (name, why) in [
        (
            "decoder-syntax-error-panics-in-tokenizers",
            "key must be a string",
        ),
        (
            "decoder-invalid-utf8-panics-in-tokenizers",
            "invalid unicode code point",
        ),
        ("precompiled-normalizer-panics-in-tokenizers", "Precompiled"),
    ] {
        let mut files = ModelFiles::new("tok");
        files.insert("tokenizer.json", finding("tokenizer_json", name));
        let err = ClipTokenizer::from_files(&files).err().unwrap().to_string();
        assert!(err.contains("tok/tokenizer.json"), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
}

/// A GGUF v3 file of f32 tensors `(name, ggml dimensions, data offset)` over `data` (no
/// metadata).
fn gguf_file(tensors: &[(&str, &[u64], u64)], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(0u64.to_le_bytes());
    for (name, dims, offset) in tensors {
        out.extend((name.len() as u64).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // f32
        out.extend(offset.to_le_bytes());
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend(data);
    out
}

#[test]
fn gguf_tensors_may_not_share_bytes_or_names() {
    use tastebud_core::gguf;
    let data = vec![0u8; 4096];
    // Laid out one after another (as ggml writes them): read.
    let fine = gguf_file(&[("a", &[512], 0), ("b", &[512], 2048)], &data);
    assert_eq!(gguf::read_weights("f.gguf", &fine).unwrap().dense.len(), 2);
    // A thousand tensors on the same 4 KiB would widen to 4 MiB (a real file of this kind
    // asks for terabytes): refused, naming two of them.
    let names: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    let aliased: Vec<_> = names.iter().map(|n| (n.as_str(), &[1024][..], 0)).collect();
    let err = gguf::read_weights("alias.gguf", &gguf_file(&aliased, &data)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("alias.gguf") && text.contains("share data bytes"),
        "{text}"
    );
    // Partial overlap is refused too; a repeated name would silently replace a weight.
    let overlap = gguf_file(&[("a", &[512], 0), ("b", &[512], 1024)], &data);
    assert!(gguf::GgufFile::parse("o.gguf", &overlap).is_err());
    let twice = gguf_file(&[("a", &[512], 0), ("a", &[512], 2048)], &data);
    let text = gguf::read_weights("twice.gguf", &twice)
        .unwrap_err()
        .to_string();
    assert!(text.contains("tensor a appears twice"), "{text}");
}

/// A tensor in a pickle: name, storage key, storage elements, sizes, strides.
type PickledTensor<'a> = (&'a str, &'a str, i32, &'a [i32], &'a [i32]);

/// A protocol-2 pickle of a dict of f32 tensors, as `torch.save` writes them.
fn state_dict_pickle(tensors: &[PickledTensor]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let ints = |p: &mut Vec<u8>, values: &[i32]| {
        p.push(b'(');
        for v in values {
            p.push(b'J');
            p.extend(v.to_le_bytes());
        }
        p.push(b't');
    };
    for (name, key, elements, size, stride) in tensors {
        text(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        text(&mut p, key);
        text(&mut p, "cpu");
        p.push(b'J');
        p.extend(elements.to_le_bytes());
        p.extend(b"tQ");
        p.push(b'J');
        p.extend(0i32.to_le_bytes()); // storage offset
        ints(&mut p, size);
        ints(&mut p, stride);
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

#[test]
fn a_checkpoint_cannot_expand_without_bound() {
    use tastebud_core::torch_pickle::{MAX_EXPANSION, read_checkpoint};
    const N: i32 = 1 << 18; // a 1 MiB storage
    let storage = vec![("0", vec![0u8; 4 << 18])];
    // Tied weights (two tensors on one storage) load.
    let tied = state_dict_pickle(&[
        ("embed.weight", "0", N, &[N], &[1]),
        ("head.weight", "0", N, &[N], &[1]),
    ]);
    let read = read_checkpoint("tied.pt", &torch_archive_with(&tied, &storage)).unwrap();
    assert_eq!(read["head.weight"].data.len(), 4 << 18);
    // Forty tensors on it would take 80 MiB from a 1 MiB archive: refused, naming the limit.
    let names: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let many: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), "0", N, &[N][..], &[1][..]))
        .collect();
    let err = read_checkpoint(
        "many.pt",
        &torch_archive_with(&state_dict_pickle(&many), &storage),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("many.pt") && text.contains(&format!("{MAX_EXPANSION} times")),
        "{text}"
    );
    // A zero stride repeats one value 2^30 times (4 GiB): refused before it is gathered.
    let one = vec![("0", vec![0u8; 4])];
    let repeat = state_dict_pickle(&[("w", "0", 1, &[1 << 30], &[0])]);
    let text = read_checkpoint("stride.pt", &torch_archive_with(&repeat, &one))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("stride.pt") && text.contains("zero strides"),
        "{text}"
    );
}
