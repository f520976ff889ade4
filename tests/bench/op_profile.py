"""Where the time goes: time per layer kind, Tastebud next to PyTorch, same model, same machine.

Runs `tastebud bench --profile` on the SD-Turbo-architecture snapshot of generate_bench.py
(random weights; speed does not depend on them) and the same one-step generation in diffusers
with forward hooks on every module. Both sides measure the same thing: the wall time of each
layer kind (convolutions by kernel size, Linear, attention's core, GroupNorm, LayerNorm, SiLU,
GELU, upsampling), *self* time (a Linear inside an attention module counts as linear, not
attention), per stage (text encoder, one UNet step, decoder), mean of the timed runs after the
warm-up ones; the remainder of each stage is `unprofiled` (reshapes, residual sums, scheduler).

    python tests/bench/op_profile.py --tastebud $CARGO_TARGET_DIR/debug/tastebud [--size 256] \
        [--runs 1] [--warmup 1] [--taesd] [--device cpu] [--extra-args "--dtype f16"]

Prints one markdown table per stage for BENCHMARKS.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_bench import make_snapshot, make_taesd  # noqa: E402

STAGES = ("text", "denoise", "decode")


def kind_of(module):
    """The layer kind a module's self time is filed under, as Tastebud names them, or None."""
    name = type(module).__name__
    if isinstance(module, torch.nn.Conv2d):
        k = tuple(module.kernel_size)
        return {(1, 1): "conv2d 1x1", (3, 3): "conv2d 3x3"}.get(k, "conv2d other")
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.GroupNorm):
        return "group_norm"
    if isinstance(module, torch.nn.LayerNorm):
        return "layer_norm"
    if isinstance(module, torch.nn.SiLU):
        return "silu"
    if isinstance(module, torch.nn.ReLU):
        return "relu"
    if name in ("GEGLU", "GELU", "GELUActivation", "QuickGELUActivation", "NewGELUActivation"):
        return "gelu"
    if name == "Attention" or name.endswith("Attention"):
        return "attention"
    if name == "Upsample2D":
        return "upsample"
    return None


class Profiler:
    """Self time per (stage, kind) from forward pre/post hooks, nesting subtracted."""

    def __init__(self, model_parts):
        self.stage = None
        self.table = defaultdict(lambda: [0, 0.0])
        self.open = []
        for part in model_parts:
            for module in part.modules():
                kind = kind_of(module)
                if kind:
                    module.register_forward_pre_hook(self._enter)
                    module.register_forward_hook(self._make_exit(kind))

    def _enter(self, module, args):
        self.open.append([time.perf_counter(), 0.0])

    def _make_exit(self, kind):
        def exit_(module, args, output):
            started, nested = self.open.pop()
            total = time.perf_counter() - started
            if self.open:
                self.open[-1][1] += total
            if self.stage:
                entry = self.table[(self.stage, kind)]
                entry[0] += 1
                entry[1] += (total - nested) * 1e3
        return exit_


def torch_profile(snapshot, size, runs, warmup, prompt, taesd):
    pipe = StableDiffusionPipeline.from_pretrained(snapshot, torch_dtype=torch.float32)
    if taesd:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prof = Profiler([pipe.text_encoder, pipe.unet, pipe.vae])
    gen = torch.Generator().manual_seed(0)
    totals = defaultdict(float)

    def once(record):
        with torch.no_grad():
            prof.stage = "text" if record else None
            t0 = time.perf_counter()
            embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
            t1 = time.perf_counter()
            prof.stage = "denoise" if record else None
            latents = pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=1,
                           guidance_scale=0.0, output_type="latent", generator=gen).images
            t2 = time.perf_counter()
            prof.stage = "decode" if record else None
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
            t3 = time.perf_counter()
            prof.stage = None
        if record:
            for stage, ms in zip(STAGES, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)):
                totals[stage] += ms

    for _ in range(warmup):
        once(False)
    for _ in range(runs):
        once(True)
    report = {}
    for stage in STAGES:
        rows = {kind: {"ms": ms / runs, "calls": calls / runs}
                for (s, kind), (calls, ms) in prof.table.items() if s == stage}
        stage_ms = totals[stage] / runs
        rows["unprofiled"] = {"ms": max(stage_ms - sum(r["ms"] for r in rows.values()), 0.0), "calls": 0}
        report[stage] = {"total": stage_ms, "rows": rows}
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tastebud", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--taesd", action="store_true", help="decode with TAESD's architecture instead of the VAE")
    ap.add_argument("--snapshot", default=os.path.expanduser("~/.cache/tastebud/sd-turbo-random"))
    ap.add_argument("--extra-args", default="", help="more `tastebud bench` flags, e.g. '--dtype f16'")
    args = ap.parse_args()
    prompt = "a photo of a cat"
    make_snapshot(args.snapshot)
    taesd = os.path.expanduser("~/.cache/tastebud/taesd-random") if args.taesd else None
    if taesd:
        make_taesd(taesd)
    cmd = [args.tastebud, "bench", "--profile", "--model", args.snapshot, "--device", args.device,
           "--width", str(args.size), "--height", str(args.size), "--runs", str(args.runs),
           "--warmup", str(args.warmup), "--prompt", prompt] + (["--decoder", taesd] if taesd else [])
    cmd += args.extra_args.split()
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ours = {stage: {"total": out[f"{stage}_ms"], "rows": out["profile"][stage]} for stage in STAGES}
    theirs = torch_profile(args.snapshot, args.size, args.runs, args.warmup, prompt, taesd)
    # Tastebud fuses GroupNorm with the SiLU after it on the CPU: compare the pair as one row.
    for side in (ours, theirs):
        for stage in STAGES:
            rows = side[stage]["rows"]
            parts = [rows.pop(k) for k in ("group_norm", "silu", "group_norm+silu") if k in rows]
            if parts:
                rows["group_norm, silu"] = {"ms": sum(p["ms"] for p in parts), "calls": sum(p["calls"] for p in parts)}

    print(f"SD-Turbo architecture, {args.size}x{args.size}, 1 step, f32, mean of {args.runs} run(s) after "
          f"{args.warmup} warm-up; Tastebud on {out['device']}, torch {torch.__version__} on "
          f"{torch.get_num_threads()} threads\n")
    for stage in STAGES:
        a, b = ours[stage], theirs[stage]
        print(f"{stage}: Tastebud {a['total']:.0f} ms, PyTorch {b['total']:.0f} ms "
              f"({a['total'] / max(b['total'], 1e-9):.2f}x)\n")
        print("| layer kind | Tastebud ms | share | PyTorch ms | share | ratio | calls |")
        print("|---|---|---|---|---|---|---|")
        kinds = sorted(set(a["rows"]) | set(b["rows"]), key=lambda k: -a["rows"].get(k, {"ms": 0})["ms"])
        for kind in kinds:
            ra, rb = a["rows"].get(kind, {"ms": 0.0, "calls": 0}), b["rows"].get(kind, {"ms": 0.0, "calls": 0})
            ratio = f"{ra['ms'] / rb['ms']:.1f}x" if rb["ms"] > 0.05 else "-"
            print(f"| {kind} | {ra['ms']:.1f} | {ra['ms'] / max(a['total'], 1e-9):.0%} | {rb['ms']:.1f} | "
                  f"{rb['ms'] / max(b['total'], 1e-9):.0%} | {ratio} | {ra['calls']:.0f} / {rb['calls']:.0f} |")
        print()


if __name__ == "__main__":
    main()
