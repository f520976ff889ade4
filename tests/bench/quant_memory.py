"""Memory and time per weight format (#18): f32 / f16 / q8_0 / q4_0, with quantized weights kept
quantized on the device, for the SD-Turbo architecture (random weights) and the shipped shapes
generator, on the CPU (flex) and wgpu (lavapipe here); plus the 2 GB WebGPU budget check:
SD-Turbo's UNet in q4_0 and text encoder in q8_0 with TAESD, computed in f32 (no shader-f16).

    python tests/bench/quant_memory.py --tastebud $CARGO_TARGET_DIR/debug/tastebud \
        [--devices cpu,gpu] [--size 256] [--budget-size 512] [--skip-shapes|--skip-sdturbo|--skip-budget]

Each row is one `tastebud bench` process (one warm-up, then one timed run; on lavapipe no
warm-up: shader compilation is in its time), so its peak resident memory is that format's alone:
the file read, the weights on the device, the activations. On lavapipe device memory is process
memory, so the peak RSS bounds what a GPU would hold. f32 = the f16 files computed in f32
(the default), f16 = `--dtype f16`, qN = `tastebud quantize --to qN` (default keep: `conv_out`).
The SD-Turbo snapshot and TAESD folder are made by generate_bench.py's builders if absent.
Prints markdown tables for BENCHMARKS.md.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SHAPES = os.path.join(ROOT, "models", "shapes", "generator")
CACHE = os.path.expanduser("~/.cache/tastebud")


def weight_bytes(folder):
    total = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            if n.endswith((".safetensors", ".gguf", ".bin")):
                total += os.path.getsize(os.path.join(dirpath, n))
    return total


def quantize(tastebud, model, out, args):
    if not os.path.exists(os.path.join(out, "model_index.json")):
        subprocess.run([tastebud, "quantize", "--model", model, "--out", out, *args], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def bench(tastebud, model, device, size, extra=(), warmup=1):
    cmd = [tastebud, "bench", "--model", model, "--device", device, "--width", str(size),
           "--height", str(size), "--runs", "1", "--warmup", str(warmup), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
    return json.loads(p.stdout)


def formats(tastebud, model, name):
    base = os.path.join(CACHE, "quant-memory", name)
    return [
        ("f32 (f16 files)", model, []),
        ("f16 (`--dtype f16`)", model, ["--dtype", "f16"]),
        ("q8_0", quantize(tastebud, model, base + "-q8_0", ["--to", "q8_0"]), []),
        ("q4_0", quantize(tastebud, model, base + "-q4_0", ["--to", "q4_0"]), []),
    ]


def table(title, rows):
    print(f"\n{title}\n")
    print("| weights | device | weight files (MB) | load (ms) | one image (ms) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for label, device, size, r in rows:
        if "error" in r:
            print(f"| {label} | {device} | {size / 1e6:.1f} | - | - | - ({r['error']}) |")
        else:
            print(f"| {label} | {device} | {size / 1e6:.1f} | {r['load_ms']:.0f} | {r['total_ms']:.0f} | "
                  f"{r['peak_rss_mib']:.0f} |")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tastebud", required=True)
    ap.add_argument("--devices", default="cpu,gpu")
    ap.add_argument("--size", type=int, default=256, help="SD-Turbo image side")
    ap.add_argument("--budget-size", type=int, default=512)
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--skip-sdturbo", action="store_true")
    ap.add_argument("--skip-budget", action="store_true")
    args = ap.parse_args()
    devices = args.devices.split(",")

    if not args.skip_shapes:
        rows = []
        for label, model, extra in formats(args.tastebud, SHAPES, "shapes"):
            for device in devices:
                r = bench(args.tastebud, model, device, 64, extra)
                rows.append((label, device, weight_bytes(model), r))
        table("Shapes generator, 64x64, one step", rows)

    if args.skip_sdturbo and args.skip_budget:
        return
    sys.path.insert(0, HERE)
    import generate_bench  # noqa: E402  (torch + diffusers, only for building the snapshot)
    sdturbo = os.path.join(CACHE, "sd-turbo-random")
    generate_bench.make_snapshot(sdturbo)
    if not args.skip_sdturbo:
        rows = []
        for label, model, extra in formats(args.tastebud, sdturbo, "sd-turbo"):
            for device in devices:
                warmup = 1 if device == "cpu" else 0
                r = bench(args.tastebud, model, device, args.size, extra, warmup)
                rows.append((label, device, weight_bytes(model), r))
        table(f"SD-Turbo architecture (random weights), {args.size}x{args.size}, one step", rows)
    if not args.skip_budget:
        taesd = os.path.join(CACHE, "taesd-random")
        generate_bench.make_taesd(taesd)
        model = quantize(args.tastebud, sdturbo, os.path.join(CACHE, "quant-memory", "sd-turbo-budget"),
                         ["--to", "q4_0", "--mix", "text_encoder/=q8_0"])
        size = weight_bytes(model) - weight_bytes(os.path.join(model, "vae")) + weight_bytes(taesd)
        rows = []
        for device in devices:
            r = bench(args.tastebud, model, device, args.budget_size, ["--decoder", taesd], 0)
            rows.append(("UNet q4_0 + text encoder q8_0 + TAESD, f32 compute", device, size, r))
        table(f"2 GB WebGPU budget check, {args.budget_size}x{args.budget_size}, one cold run", rows)


if __name__ == "__main__":
    main()
