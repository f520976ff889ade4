#!/usr/bin/env bash
# The real-GPU check (about 8 minutes on an H200, the fused build's warm-ups included): run on
# a bare Linux machine with an NVIDIA GPU,
# PyTorch and no network, in a copy of the repository that carries .gpu/ (made by
# tests/gpu/prepare.sh, whose header gives the call: tests/fixtures stay behind). It
#   1. builds the SD-Turbo-architecture snapshot (random weights) and a CLIP-H-sized reward there,
#   2. checks parity on the GPU: one noise through diffusers on CUDA (fp32, TF32 off) and
#      through `tastebud generate` on the GPU (f32, f16) and on the CPU, pictures compared,
#   3. times `tastebud bench` at 512 px on the GPU in f32 and f16 and one ReNO iteration's worth,
#      and the same bench and ReNO with burn's kernel fusion (the `fusion` build),
#   4. times diffusers on CUDA, fp32 and fp16, on the same snapshot (tests/gpu/torch_cuda.py),
# and writes everything to $OUT (or /tmp/tastebud-gpu): log.txt, results.json, results.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tastebud-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
WORK=/tmp/tastebud-gpu-work
mkdir -p "$WORK/bin"
step() { echo "== $(date +%T) [$SECONDS s] $*"; }

if [ ! -d .gpu/bin ]; then
  echo "no .gpu/: run tests/gpu/prepare.sh first and carry .gpu"
  exit 2
fi
step "setup"
for f in .gpu/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site
for f in .gpu/bin/*.xz; do
  xz -dc "$f" >"$WORK/bin/$(basename "$f" .xz)"
done
chmod +x "$WORK/bin/"*
nvidia-smi | tee "$OUT/nvidia-smi.txt"
TB="$WORK/bin/tastebud"

# Peak GPU memory of a command, sampled by nvidia-smi every 50 ms (MiB in use on the GPU).
peak_gpu() {
  local log="$WORK/smi.$RANDOM"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$log" &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null
  wait $smi 2>/dev/null
  echo "peak_gpu_mib $(sort -n "$log" | tail -1)" >&2
  return $rc
}

step "models"
SNAP=$WORK/sd-turbo-random
CLIP=$WORK/clip-h-random
python3 - "$SNAP" "$CLIP" <<'EOF'
import sys
sys.path.insert(0, "tests/bench")
from generate_bench import make_snapshot
from reno_bench import make_clip_h
make_snapshot(sys.argv[1])
make_clip_h(sys.argv[2])
EOF

step "parity on the GPU: one noise through diffusers (CUDA fp32) and Tastebud"
# The parity tests' fixtures stay behind (the tree that travels is capped), so the check is the
# real architecture itself: diffusers' picture from a saved noise against Tastebud's.
python3 tests/gpu/torch_cuda.py --snapshot "$SNAP" --parity "$WORK/noise.npy" "$WORK/parity-diffusers.png"
for variant in gpu-f32 gpu-f16 cpu-f32; do
  timeout 150 "$TB" generate --model "$SNAP" --prompt "a photo of a cat" --noise "$WORK/noise.npy" \
    --device "${variant%-*}" --dtype "${variant#*-}" --out "$WORK/parity-$variant.png" 2>&1 | tail -2
done
python3 - "$WORK" <<'EOF2' | tee "$WORK/parity.txt"
import sys
import numpy as np
from PIL import Image
work = sys.argv[1]
want = np.asarray(Image.open(f"{work}/parity-diffusers.png").convert("RGB"), dtype=np.int16)
for v in ("gpu-f32", "gpu-f16", "cpu-f32"):
    try:
        got = np.asarray(Image.open(f"{work}/parity-{v}.png").convert("RGB"), dtype=np.int16)
    except OSError as e:
        print(f"{v}: no picture ({e})")
        continue
    d = np.abs(got - want)
    print(f"{v} vs diffusers CUDA fp32: max {d.max()} levels, mean {d.mean():.3f}, "
          f"{(d > 1).mean() * 100:.2f}% of values off by more than 1")
EOF2
"$TB" devices 2>&1 | tee "$WORK/devices.txt" || true

step "tastebud bench, 512 px, GPU"
for dtype in f32 f16; do
  peak_gpu "$TB" bench --model "$SNAP" --device gpu --dtype $dtype --runs 3 --warmup 1 \
    >"$WORK/bench-$dtype.json" 2>"$WORK/bench-$dtype.err"
  tail -3 "$WORK/bench-$dtype.err"
done

step "tastebud bench, 512 px, GPU, with kernel fusion"
for variant in gpu-f32 gpu-f16; do
  peak_gpu timeout 90 "$WORK/bin/tastebud-fused" bench --model "$SNAP" --device "${variant%-*}" \
    --dtype "${variant#*-}" --runs 3 --warmup 1 \
    >"$WORK/fused-$variant.json" 2>"$WORK/fused-$variant.err"
  tail -3 "$WORK/fused-$variant.err"
done

step "tastebud optimize (ReNO), 512 px, GPU"
for dtype in f32 f16; do
  peak_gpu "$TB" optimize --model "$SNAP" --prompt "a photo of a cat" --reward "clip=$CLIP:0.01" \
    --iters 4 --device gpu --dtype $dtype --json --out "$WORK/reno-$dtype.png" \
    >"$WORK/reno-$dtype.json" 2>"$WORK/reno-$dtype.err"
  tail -3 "$WORK/reno-$dtype.err"
done

step "tastebud optimize (ReNO), 512 px, GPU, with kernel fusion"
# 10 iterations: on lavapipe fusion's first two iterations carried ~75 s of autotuning and
# kernel compilation, so its per-iteration figure needs a run long enough to show both.
for variant in gpu-f32; do
  peak_gpu timeout 120 "$WORK/bin/tastebud-fused" optimize --model "$SNAP" --prompt "a photo of a cat" \
    --reward "clip=$CLIP:0.01" --iters 10 --device "${variant%-*}" --dtype "${variant#*-}" --json \
    --out "$WORK/fused-reno-$variant.png" >"$WORK/fused-reno-$variant.json" 2>"$WORK/fused-reno-$variant.err"
  tail -3 "$WORK/fused-reno-$variant.err"
done

step "diffusers on CUDA"
python3 tests/gpu/torch_cuda.py --snapshot "$SNAP" --clip "$CLIP" --size 512 --iters 3 --out "$WORK/torch.json"

step "results"
python3 - "$WORK" "$OUT" <<'EOF'
import json, os, re, sys
work, out = sys.argv[1], sys.argv[2]
def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def peak(name):
    try:
        m = re.findall(r"peak_gpu_mib (\d+)", open(os.path.join(work, name)).read())
        return int(m[-1]) if m else None
    except OSError:
        return None
r = {"parity": open(os.path.join(work, "parity.txt")).read().splitlines(),
     "devices": open(os.path.join(work, "devices.txt")).read(), "torch": load("torch.json")}
for d in ("f32", "f16"):
    r[f"bench_{d}"] = load(f"bench-{d}.json")
    r[f"bench_{d}_peak_gpu_mib"] = peak(f"bench-{d}.err")
    r[f"reno_{d}"] = load(f"reno-{d}.json")
    r[f"reno_{d}_peak_gpu_mib"] = peak(f"reno-{d}.err")
for v in ("gpu-f32", "gpu-f16"):
    r[f"fused_{v}"] = load(f"fused-{v}.json")
    r[f"fused_{v}_peak_gpu_mib"] = peak(f"fused-{v}.err")
for v in ("gpu-f32",):
    r[f"fused_reno_{v}"] = load(f"fused-reno-{v}.json")
    r[f"fused_reno_{v}_peak_gpu_mib"] = peak(f"fused-reno-{v}.err")
json.dump(r, open(os.path.join(out, "results.json"), "w"), indent=1)
lines = ["| runtime | precision | text (ms) | UNet step (ms) | VAE decode (ms) | total (ms) | peak GPU (MiB) |",
         "|---|---|---|---|---|---|---|"]
for d in ("f32", "f16"):
    b = r[f"bench_{d}"]
    if b:
        lines.append(f"| Tastebud wgpu | {d} | {b['text_ms']:.1f} | {b['denoise_ms']:.1f} | {b['decode_ms']:.1f} | "
                     f"{b['total_ms']:.1f} | {r[f'bench_{d}_peak_gpu_mib']} (whole GPU) |")
for v, name in (("gpu", "Tastebud wgpu + fusion"),):
    for d in ("f32", "f16"):
        b = r[f"fused_{v}-{d}"]
        if b:
            lines.append(f"| {name} | {d} | {b['text_ms']:.1f} | {b['denoise_ms']:.1f} | {b['decode_ms']:.1f} | "
                         f"{b['total_ms']:.1f} | {r[f'fused_{v}-{d}_peak_gpu_mib']} (whole GPU) |")
        else:
            lines.append(f"| {name} | {d} | failed: see log.txt | | | | |")
t = r["torch"] or {}
for d in ("fp32", "fp16"):
    g = t.get(f"generate_{d}")
    if g:
        lines.append(f"| diffusers CUDA | {d} | {g['text_ms']:.1f} | {g['denoise_ms']:.1f} | {g['decode_ms']:.1f} | "
                     f"{g['total_ms']:.1f} | {g['peak_gpu_mib']:.0f} (allocated) |")
lines += ["", "| ReNO | precision | per iteration (ms) | peak GPU (MiB) |", "|---|---|---|---|"]
for d in ("f32", "f16"):
    o = r[f"reno_{d}"]
    if o:
        lines.append(f"| Tastebud wgpu | {d} | {o['ms']['per_step']:.1f} | {r[f'reno_{d}_peak_gpu_mib']} (whole GPU) |")
for v, name in (("gpu-f32", "Tastebud wgpu + fusion (10 iterations)"),):
    o = r[f"fused_reno_{v}"]
    if o:
        lines.append(f"| {name} | f32 | {o['ms']['per_step']:.1f} | {r[f'fused_reno_{v}_peak_gpu_mib']} (whole GPU) |")
for d in ("fp32", "fp16"):
    g = t.get(f"reno_{d}")
    if g:
        lines.append(f"| PyTorch CUDA | {d} | {g['per_iteration_ms']:.1f} | {g['peak_gpu_mib']:.0f} (allocated) |")
lines += ["", "Parity, one noise at 512 px (random weights): " + "; ".join(r["parity"])]
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
step "done"
