"""CLIPScore speed: Tastebud vs transformers on the same machine, in one run.

A random-initialised CLIP with the real sizes of openai/clip-vit-base-patch32 (151 M params;
weights are random because none can be downloaded here: speed does not depend on them) scores
N images against one prompt. Both sides include preprocessing, both towers and the scores, and
report the median over runs after a warm-up; model loading is reported separately.

    python tests/bench/clip_bench.py --tastebud $CARGO_TARGET_DIR/debug/tastebud [--devices cpu,gpu]

Prints a markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time

import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")


def b32_config():
    # openai/clip-vit-base-patch32's config.json sizes.
    return CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, projection_dim=512),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", projection_dim=512),
        projection_dim=512,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tastebud", required=True, help="path to the tastebud binary")
    ap.add_argument("--devices", default="cpu", help="tastebud devices to time, e.g. cpu,gpu")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default="/tmp/tastebud-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = os.path.join(args.work, "clip-vit-b32-random")
    os.makedirs(folder, exist_ok=True)
    model = CLIPModel(b32_config()).eval()
    model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(FIXTURES, "clip-openai", name), folder)
    images = [os.path.join(FIXTURES, f"image{i % 2}.png") for i in range(args.images)]
    prompt = "a photo of a cat"

    # transformers (PyTorch, CPU)
    started = time.perf_counter()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    processor = CLIPImageProcessor.from_pretrained(folder)
    reloaded = CLIPModel.from_pretrained(folder).eval()
    load_ms = (time.perf_counter() - started) * 1e3
    pil = [Image.open(p).convert("RGB") for p in images]

    def torch_score():
        with torch.no_grad():
            tok = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            px = processor(images=pil, return_tensors="pt").pixel_values
            return reloaded(input_ids=tok.input_ids, pixel_values=px).logits_per_image[:, 0]

    torch_score()
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        want = torch_score()
        times.append((time.perf_counter() - started) * 1e3)
    rows = [("transformers " + transformers.__version__ + f", torch {torch.__version__} CPU, {args.threads} threads",
             load_ms, statistics.median(times), None)]

    for device in args.devices.split(","):
        cmd = [args.tastebud, "score", "--reward", f"clip={folder}", "--prompt", prompt, "--device", device, "--json",
               "--repeat", str(args.runs + 1), *images]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        got = torch.tensor([s["rewards"]["clip"] for s in out["scores"]])
        err = float(((got - want).abs() / want.abs().clamp(min=1e-3)).max())
        rows.append((f"tastebud --device {device}: {out['device']}", out["load_ms"], out["score_ms"], err))

    print(f"CLIP ViT-B/32 sizes (random init), 1 prompt x {args.images} images (224 px crops from "
          f"300x200 and 181x257 PNGs), median of {args.runs} runs after warm-up; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.\n")
    print("| runtime | load (ms) | score (ms) | ratio to transformers | max rel. diff of scores |")
    print("|---|---|---|---|---|")
    base = rows[0][2]
    for name, load, score, err in rows:
        diff = "-" if err is None else f"{err:.1e}"
        print(f"| {name} | {load:.0f} | {score:.0f} | {score / base:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
