#!/usr/bin/env bash
# Packs what tests/gpu/check.sh needs on a bare GPU machine without network into .gpu/ (ignored
# by git): a stripped release build of `tastebud` and of the GPU parity tests, the Vulkan loader
# packages, and the diffusers wheel (the device image has PyTorch and transformers, no
# diffusers). Run it here, where crates.io, Debian and PyPI are reachable; then, with a GPU:
#
#   run(command="bash tests/gpu/check.sh", carry=[".gpu"], timeout_s=540)
#
# and read the results from the files it returns (results.md, results.json, log.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tastebud/target}
PYTHON=${PYTHON:-python3}
rm -rf .gpu && mkdir -p .gpu/bin .gpu/gl .gpu/whl

# The parity tests that exercise the GPU paths (wgpu and f16); each tests every device it finds.
TESTS=(unet_parity vae_parity pipeline_parity reno_parity f16)
cargo build --release -p tastebud --bin tastebud
cargo test --release -p tastebud-core --no-run $(printf -- '--test %s ' "${TESTS[@]}") \
  --message-format=json 2>/dev/null |
  "$PYTHON" -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".gpu/bin/" + m["target"]["name"])
'
cp "$CARGO_TARGET_DIR/release/tastebud" .gpu/bin/
# The same CLI with burn's kernel fusion and fusion autotuning, so the check can decide that
# lever on the real GPU. Built second: only burn's crates and ours rebuild for the feature.
cargo build --release -p tastebud --bin tastebud --features fusion
cp "$CARGO_TARGET_DIR/release/tastebud" .gpu/bin/tastebud-fused
strip .gpu/bin/*
# xz: the working tree that travels is capped at 64 MiB.
xz -T0 -6 .gpu/bin/*

# Vulkan's loader (the NVIDIA driver brings the ICD). Debian's amd64 packages, unpacked there.
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update -qq
(cd .gpu/gl && apt-get $o download libvulkan1 >/dev/null)

# diffusers and the one requirement the image lacks, for the device's Python 3.12.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl "diffusers==$("$PYTHON" -c 'import diffusers; print(diffusers.__version__)')" \
  importlib_metadata

# The tests read fixtures from the path they were built in; check.sh links it there.
echo "$ROOT" >.gpu/built-in
du -sh .gpu
ls -la .gpu/bin .gpu/gl .gpu/whl
