#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/TARGET/) from the repository's
own fixtures and shipped models, each input shaped as its target reads it (targets.rs: two
files joined by a NUL byte, a component byte before a config). Standard library only.

    python3 tests/fuzz/make_seeds.py --tastebud $CARGO_TARGET_DIR/debug/tastebud

`--tastebud` (optional) also fits a small personal head with the CLI for the `head` target.
Reruns overwrite the seeds; what the fuzzers add lives beside them (run.sh) and is minimised
into the corpus folders before it is committed.
"""

import argparse
import json
import struct
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
SHAPES = ROOT / "models" / "shapes"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def put(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def copy(target, path, name=None):
    put(target, name or path.name, path.read_bytes())


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tastebud", help="a built tastebud binary (for the head seed)")
    args = parser.parse_args()

    # safetensors: fixtures plus one of each dtype the loaders widen.
    copy("safetensors", FIX / "personal" / "reference.safetensors", "personal.safetensors")
    copy("safetensors", FIX / "reno" / "reference.safetensors", "reno.safetensors")
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    put("safetensors", "dtypes.safetensors", safetensors({
        "f32": ("F32", [2, 2], f32),
        "f16": ("F16", [4], struct.pack("<4e", 1.0, -2.0, 0.5, 3.0)),
        "bf16": ("BF16", [2], b"\x80\x3f\x00\xc0"),
        "i64": ("I64", [1], struct.pack("<q", 7)),
    }, {"format": "pt"}))

    # torch.save archives: the aesthetic head, a legacy (non-zip) file, one that runs code.
    copy("torch_pickle", FIX / "rewards" / "aesthetic-head" / "sac+logos+ava1-l14-linearMSE.pth",
         "aesthetic.pth")
    copy("torch_pickle", FIX / "rewards" / "bad" / "legacy.pt")
    copy("torch_pickle", FIX / "rewards" / "bad" / "runs-code.pt")

    copy("gguf", FIX / "gguf" / "tiny.gguf")

    for snapshot in ["sd-turbo-tiny", "sdxl-turbo-tiny", "sd1-tiny"]:
        copy("model_index", FIX / snapshot / "model_index.json", f"{snapshot}.json")
        copy("scheduler_config", FIX / snapshot / "scheduler" / "scheduler_config.json",
             f"{snapshot}.json")
    copy("model_index", SHAPES / "generator" / "model_index.json", "shapes.json")

    # model_config: the first byte picks the component (targets.rs, `model_config`; 6 is the
    # catch-all, ImageReward's med_config.json).
    configs = [
        (0, FIX / "sd-turbo-tiny" / "unet" / "config.json", "unet-sd-turbo"),
        (0, FIX / "sdxl-turbo-tiny" / "unet" / "config.json", "unet-sdxl"),
        (0, SHAPES / "generator" / "unet" / "config.json", "unet-shapes"),
        (1, FIX / "sd-turbo-tiny" / "vae" / "config.json", "vae"),
        (1, SHAPES / "generator" / "vae" / "config.json", "vae-shapes"),
        (2, SHAPES / "proxy" / "config.json", "taesd"),
        (3, FIX / "clip-openai" / "config.json", "clip"),
        (3, SHAPES / "clip" / "config.json", "clip-shapes"),
        (4, FIX / "sd-turbo-tiny" / "text_encoder" / "config.json", "text-encoder"),
        (5, FIX / "rewards" / "dinov2-tiny" / "config.json", "dinov2"),
        (6, FIX / "rewards" / "imagereward-tiny" / "med_config.json", "med-config"),
        (7, FIX / "rewards" / "open-clip-tiny" / "open_clip_config.json", "open-clip"),
        (8, FIX / "clip-openai" / "preprocessor_config.json", "preprocessor"),
    ]
    for which, path, name in configs:
        put("model_config", f"{name}.json", bytes([which]) + path.read_bytes())

    put("tokenizer_json", "shapes-clip", (SHAPES / "clip" / "tokenizer.json").read_bytes() + b"\0"
        + (SHAPES / "clip" / "tokenizer_config.json").read_bytes())
    put("tokenizer_json", "clip-tf5", (FIX / "clip-tf5" / "tokenizer.json").read_bytes())
    # The shapes tokenizer cut to its first merges and the tokens they need: the same code
    # paths at a tenth of the bytes, so mutations of it run several times faster.
    tok = json.loads((SHAPES / "clip" / "tokenizer.json").read_text())
    merges = tok["model"]["merges"][:12]
    vocab = tok["model"]["vocab"]
    keep = {t for t in vocab if len(t) == 1 or t in ("<|startoftext|>", "<|endoftext|>")}
    keep |= {"".join(m) for m in merges} | {t + "</w>" for t in keep if len(t) == 1}
    tok["model"]["vocab"] = {t: i for t, i in vocab.items() if t in keep}
    tok["model"]["merges"] = merges
    put("tokenizer_json", "shapes-clip-small", json.dumps(tok).encode())

    # vocab.json + NUL + merges.txt, cut to the first few hundred entries (the full files are
    # 1.5 MB, too large for a useful seed).
    vocab = json.loads((FIX / "sd-turbo-tiny" / "tokenizer" / "vocab.json").read_text())
    small = dict(list(vocab.items())[:400])
    small.update({k: v for k, v in vocab.items() if k in ("<|startoftext|>", "<|endoftext|>")})
    merges = (FIX / "sd-turbo-tiny" / "tokenizer" / "merges.txt").read_text().splitlines()[:300]
    put("vocab_merges", "clip-small", json.dumps(small).encode() + b"\0"
        + "\n".join(merges).encode() + b"\n")

    copy("bert_vocab", FIX / "rewards" / "imagereward-tiny" / "vocab.txt")

    copy("noise", FIX / "noise0.npy")
    copy("noise", FIX / "shapes" / "noise0.npy", "shapes-noise0.npy")
    put("noise", "noise.safetensors", safetensors({"noise": ("F32", [1, 1, 2, 2], f32)}))

    for path in [FIX / "preprocess" / "greyalpha-50x40.png", FIX / "preprocess" / "rgb-25x160.png",
                 FIX / "preprocess" / "rgba-64x70.png", FIX / "shapes" / "image0.png"]:
        copy("image", path)
    # A JPEG (Pillow, when present: the reference venv has it).
    try:
        from PIL import Image
        import io
        out = io.BytesIO()
        Image.open(FIX / "preprocess" / "rgb-67x64.png").convert("RGB").save(out, "JPEG",
                                                                             quality=80)
        put("image", "rgb-67x64.jpg", out.getvalue())
    except ImportError:
        print("no Pillow: the image corpus has no JPEG seed")

    store = json.loads((FIX / "personal" / "pairs.json").read_text())
    store["records"] = store["records"][:4]
    put("preferences", "pairs-4.json", json.dumps(store, indent=1).encode())

    if args.tastebud:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ["linear", "mlp"]:
                out = Path(tmp) / kind
                subprocess.run([args.tastebud, "personalize", "fit", "--prefs",
                                str(FIX / "personal" / "pairs.json"), "--head", kind,
                                "--out", str(out)], check=True, capture_output=True)
                put("head", f"{kind}-head", (out / "head.json").read_bytes() + b"\0"
                    + (out / "head.safetensors").read_bytes())

    copy("manifest", SHAPES / "manifest.json")
    put("world", "world-caption", (SHAPES / "world.json").read_bytes() + b"\0"
        + b"a photo of two red circles left of a blue square")


if __name__ == "__main__":
    main()
