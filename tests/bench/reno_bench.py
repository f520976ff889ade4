"""ReNO iteration speed and memory: Tastebud vs the same loop in PyTorch, on the same machine.

The generator is SD-Turbo's real architecture (the random-weight snapshot of generate_bench.py)
and the reward CLIPScore on a CLIP the size of OpenCLIP ViT-H/14 (986 M parameters: vision
32 x 1280, text 24 x 1024; random weights, stored in f16 as the hub's files are; built once in
~/.cache/tastebud/clip-h-random). Both sides run ReNO's loop (make_reno_fixtures.py's `run`,
SGD-Nesterov, clip 0.1, prior 0.01) for --iters iterations at --size, one step, f32 on the CPU
with the same thread count (`--dtype f16`: Tastebud's weights and activations in half
precision; PyTorch stays f32); each iteration but the last takes a backward pass. Reports the
mean time per iteration (all iterations, the first included) and peak resident memory.

    python tests/bench/reno_bench.py --tastebud $CARGO_TARGET_DIR/debug/tastebud \
        [--size 256] [--iters 3] [--taesd] [--checkpointing] [--dtype f32|f16] [--skip-torch]

Prints a markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import diffusers
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
from generate_bench import make_snapshot, make_taesd  # noqa: E402
from make_fixtures import clip_vocab_and_merges  # noqa: E402
from make_reno_fixtures import generator, run  # noqa: E402
from make_reward_fixtures import differentiable_pixels, image_features, text_features, unit  # noqa: E402

PROMPT = "a photo of a cat"


def make_clip_h(folder):
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=1024)
    model = CLIPModel(config).half()
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    vocab, merges = clip_vocab_and_merges()
    CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=77).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)


def torch_run(snapshot, clip_folder, size, iterations, taesd):
    """The reference loop of make_reno_fixtures.py (`run`) on the full-size models."""
    vae = diffusers.AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32) if taesd else None
    generate, channels = generator(snapshot, PROMPT, vae)
    clip = CLIPModel.from_pretrained(clip_folder, torch_dtype=torch.float32).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(clip_folder)
    with torch.no_grad():
        text = unit(text_features(clip, **tok([PROMPT], return_tensors="pt")))
    scale = clip.logit_scale.exp()

    def score(image):
        return {"clip": scale * (unit(image_features(clip, differentiable_pixels(image))) @ text.T)[0, 0]}

    z0 = torch.randn(1, channels, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    run(generate, score, z0, "sgd", 5.0, iterations, 0.1, 0.01, weights={"clip": 0.01}, constants={"clip": 100.0})
    per_iteration = (time.perf_counter() - t0) * 1e3 / iterations
    return {"per_iteration_ms": per_iteration, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tastebud", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--snapshot", default=os.path.expanduser("~/.cache/tastebud/sd-turbo-random"))
    ap.add_argument("--clip", default=os.path.expanduser("~/.cache/tastebud/clip-h-random"))
    ap.add_argument("--taesd", action="store_true", help="decode (and backpropagate) through TAESD instead of the VAE")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--checkpointing", action="store_true", help="Tastebud with burn's gradient checkpointing")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16"], help="Tastebud's precision")
    args = ap.parse_args()
    make_snapshot(args.snapshot)
    make_clip_h(args.clip)
    taesd = os.path.expanduser("~/.cache/tastebud/taesd-random") if args.taesd else None
    if taesd:
        make_taesd(taesd)
    rows = []
    cmd = [args.tastebud, "optimize", "--model", args.snapshot, "--prompt", PROMPT, "--reward",
           f"clip={args.clip}:0.01", "--iters", str(args.iters), "--width", str(args.size), "--height",
           str(args.size), "--device", args.device, "--dtype", args.dtype, "--json", "--out",
           "/tmp/tastebud-reno-bench.png"]
    if taesd:
        cmd += ["--decoder", taesd]
    if args.checkpointing:
        cmd += ["--gradient-checkpointing"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    lever = ", gradient checkpointing" if args.checkpointing else ""
    rows.append((f"Tastebud ({out['device']}{lever})", out["ms"]["per_step"], out["peak_rss_mib"]))
    if not args.skip_torch:
        r = torch_run(args.snapshot, args.clip, args.size, args.iters, taesd)
        rows.append((f"PyTorch {torch.__version__} + diffusers {diffusers.__version__} ({torch.get_num_threads()} threads)",
                     r["per_iteration_ms"], r["peak_rss_mib"]))
    decoder = "TAESD" if taesd else "VAE"
    print(f"ReNO on SD-Turbo's architecture ({decoder} decoder) + CLIPScore on a ViT-H/14-sized CLIP, "
          f"{args.size}x{args.size}, {args.iters} iterations ({args.iters - 1} with a backward pass), "
          f"Tastebud {args.dtype}, PyTorch f32; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| runtime | per iteration (ms) | peak RSS (MiB) |")
    print("|---|---|---|")
    for name, per, peak in rows:
        print(f"| {name} | {per:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
