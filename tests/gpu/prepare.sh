#!/usr/bin/env bash
# Packs what tests/gpu/check.sh needs on a bare GPU machine without network into .gpu/ (ignored
# by git): stripped release builds of `tastebud` (plain, and with burn's kernel fusion), the
# Vulkan loader package, and the wheels the device image lacks (it has PyTorch and
# transformers; not diffusers or open_clip). Run it here, where crates.io, Debian and PyPI are reachable.
#
# What travels to the device machine (tracked files + .gpu) is capped at 64 MiB and the tracked
# tree alone is over that (tests/fixtures is ~53 MB). check.sh needs no fixtures: its parity
# step runs one noise through diffusers on CUDA and through Tastebud on the same GPU. So the
# fixtures stay here during the call:
#
#   mv tests/fixtures /tmp/tastebud-fixtures-aside
#   run(command="bash tests/gpu/check.sh", carry=[".gpu"], timeout_s=540)
#   mv /tmp/tastebud-fixtures-aside tests/fixtures
#
# then read the results from the files it returns (results.md, results.json, log.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tastebud/target}
PYTHON=${PYTHON:-python3}
rm -rf .gpu && mkdir -p .gpu/bin .gpu/gl .gpu/whl

cargo build --release -p tastebud --bin tastebud
cp "$CARGO_TARGET_DIR/release/tastebud" .gpu/bin/
# The same CLI with burn's kernel fusion and fusion autotuning, so the check can decide that
# lever on the real GPU. Built second: only burn's crates and ours rebuild for the feature.
cargo build --release -p tastebud --bin tastebud --features fusion
cp "$CARGO_TARGET_DIR/release/tastebud" .gpu/bin/tastebud-fused
strip .gpu/bin/*
xz -T0 -6 .gpu/bin/*

# Vulkan's loader (the NVIDIA driver brings the ICD). Debian's amd64 packages, unpacked there.
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update -qq
(cd .gpu/gl && apt-get $o download libvulkan1 >/dev/null)

# What the device's Python 3.12 lacks: diffusers (+ importlib_metadata), and open_clip (+ ftfy,
# wcwidth) for CLIP's BPE vocabulary, which the snapshot builders take from tests/reference.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl "diffusers==$("$PYTHON" -c 'import diffusers; print(diffusers.__version__)')" \
  importlib_metadata open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4

# What will travel: every tracked file but the fixtures, plus .gpu (MiB; 64 at most).
tracked=$(git ls-files -z -- . ':!tests/fixtures' | du -cb --files0-from=- | tail -1 | cut -f1)
travel=$(((tracked + $(du -sb .gpu | cut -f1)) / 1048576))
ls -la .gpu/bin .gpu/gl .gpu/whl
echo "travels: $travel MiB of 64, with tests/fixtures moved aside"
[ "$travel" -lt 64 ] || { echo "too large to travel: carry less"; exit 1; }
