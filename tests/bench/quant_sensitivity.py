"""Which layers of the shapes-world generator can take q4_0: each layer group alone in q4_0
(everything else q8_0, which is within 0.1 dB of lossless here), PSNR against the f16 model's
pictures; then mixed recipes judged on the whole evaluation suite (BENCHMARKS.md, "Quantized
weights").

    cargo build --bin tastebud
    python tests/bench/quant_sensitivity.py [--tastebud PATH] [--no-sweep] [--no-eval]

Needs numpy and Pillow. Takes ~3 minutes for the sweep and ~2.5 per judged recipe on 2 cores.
The CLIP reward column is the shipped CLIP's mean reward of a recipe's pictures minus the f16
model's, picture by picture.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GROUPS = [
    "unet/time_embedding", "unet/down_blocks.0.attentions", "unet/down_blocks.0.resnets",
    "unet/down_blocks.0.downsamplers", "unet/down_blocks.1.attentions", "unet/down_blocks.1.resnets",
    "unet/down_blocks.1.downsamplers", "unet/down_blocks.2", "unet/mid_block.attentions",
    "unet/mid_block.resnets", "unet/up_blocks.0.resnets", "unet/up_blocks.0.upsamplers",
    "unet/up_blocks.1.attentions", "unet/up_blocks.1.resnets", "unet/up_blocks.1.upsamplers",
    "unet/up_blocks.2.attentions", "unet/up_blocks.2.resnets", "vae/decoder.mid_block",
    "vae/decoder.up_blocks.0", "vae/decoder.up_blocks.1", "vae/decoder.up_blocks.2", "text_encoder/",
]
# Recipes: (name, --to, [--mix PART=TYPE, ...]); the first match wins.
RECIPES = [
    ("q4_0", "q4_0", []),
    ("q4_0 mixed (outer levels q8_0, text encoder q5_0 ...)", "q4_0", [
        "text_encoder/=q5_0", "unet/down_blocks.0=q8_0", "unet/down_blocks.1=q5_0", "unet/up_blocks.1=q5_0",
        "unet/up_blocks.2=q8_0", "vae/decoder.up_blocks.2=q8_0"]),
    ("q4_0 mixed, larger (outer two levels q8_0)", "q4_0", [
        "text_encoder/=q8_0", "unet/down_blocks.0=q8_0", "unet/down_blocks.1.attentions=q8_0",
        "unet/down_blocks.1.resnets=q8_0", "unet/up_blocks.1=q8_0", "unet/up_blocks.2=q8_0",
        "vae/decoder.up_blocks.2=q8_0"]),
    ("q4_0 mixed, smaller (q5_0 for most outer layers)", "q4_0", [
        "text_encoder/=q5_0", "unet/down_blocks.0.attentions=q8_0", "unet/down_blocks.0=q5_0",
        "unet/down_blocks.1=q5_0", "unet/up_blocks.1=q5_0", "unet/up_blocks.2.resnets=q8_0",
        "unet/up_blocks.2=q5_0", "vae/decoder.up_blocks.2=q5_0"]),
]
TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def run(args, *argv):
    return subprocess.run([args.tastebud, *argv], check=True, capture_output=True, text=True).stdout


def prompts(path):
    """Two prompts of each GenEval task from the suite, three seeds each."""
    by_task = {}
    for line in open(os.path.join(ROOT, "models/shapes/eval.jsonl")):
        row = json.loads(line)
        by_task.setdefault(row["tag"], []).append(row["prompt"])
    with open(path, "w") as f:
        for rows in by_task.values():
            for prompt in rows[:2]:
                f.write(json.dumps({"prompt": prompt, "seeds": [0, 1, 2]}) + "\n")


def pictures(args, model, work, out):
    argv = ["--prompts", os.path.join(work, "prompts.jsonl"), "--out-dir", out, "--device", "cpu"]
    run(args, "generate", *(["--model", model] if model else []), *argv)
    return {n: np.asarray(Image.open(os.path.join(out, n)).convert("RGB"), np.float64)
            for n in sorted(os.listdir(out)) if n.endswith(".png")}


def clip_rewards(args, work, out):
    """The shipped CLIP's reward of every picture in `out`, by file name."""
    lines = [json.loads(line)["prompt"] for line in open(os.path.join(work, "prompts.jsonl"))]
    rewards = {}
    for i, prompt in enumerate(lines, 1):
        files = sorted(f for f in os.listdir(out) if f.startswith(f"{i:05d}-") and f.endswith(".png"))
        report = json.loads(run(args, "score", "--prompt", prompt, "--device", "cpu", "--json",
                                *[os.path.join(out, f) for f in files]))
        rewards.update({f: s["rewards"]["clip"] for f, s in zip(files, report["scores"])})
    return rewards


def psnr(ref, got):
    mse = np.mean([((ref[n] - got[n]) ** 2).mean() for n in ref])
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def quantize(args, work, to, mix):
    out = os.path.join(work, "model")
    shutil.rmtree(out, ignore_errors=True)
    run(args, "quantize", "--to", to, *[a for m in mix for a in ("--mix", m)], "--out", out)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs if f.endswith(".gguf"))
    return out, size


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tastebud", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "tastebud"))
    parser.add_argument("--no-eval", action="store_true", help="recipes without the judge")
    parser.add_argument("--no-sweep", action="store_true", help="recipes only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        prompts(os.path.join(work, "prompts.jsonl"))
        ref = pictures(args, None, work, os.path.join(work, "ref"))
        ref_rewards = clip_rewards(args, work, os.path.join(work, "ref"))
        if not args.no_sweep:
            print("| in q4_0 (the rest q8_0) | weight files | PSNR vs f16 |\n|---|---|---|")
        for group in [] if args.no_sweep else ["(nothing)"] + GROUPS:
            model, size = quantize(args, work, "q8_0", [] if group == "(nothing)" else [f"{group}=q4_0"])
            got = pictures(args, model, work, os.path.join(work, f"out-{len(os.listdir(work))}"))
            print(f"| {group} | {size / 1e6:.3f} MB | {psnr(ref, got):.1f} dB |", flush=True)
        print("\n| recipe | weight files | PSNR | CLIP reward vs f16 | overall | " + " | ".join(TASKS) + " |")
        print("|---" * (5 + len(TASKS)) + "|")
        for name, to, mix in RECIPES:
            model, size = quantize(args, work, to, mix)
            out = os.path.join(work, f"out-{len(os.listdir(work))}")
            got = pictures(args, model, work, out)
            delta = np.mean([r - ref_rewards[f] for f, r in clip_rewards(args, work, out).items()])
            row = f"| {name} | {size / 1e6:.2f} MB | {psnr(ref, got):.1f} dB | {delta:+.3f} |"
            if not args.no_eval:
                report = run(args, "shapes", "eval", "--model", model, "--device", "cpu")
                scores = json.loads(report[report.index("{"):])
                row += f" {scores['overall']:.3f} | " + " | ".join(
                    f"{scores['tasks'][t]['accuracy']:.3f}" for t in TASKS) + " |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
