#!/usr/bin/env bash
# Every test Tastebud has, from a fresh machine: installs what is missing, then runs
# formatting, lints, the Rust tests (flex CPU and wgpu on lavapipe), the wasm build (trunk) and
# the browser tests (headless Chromium: WebGPU on SwiftShader and the CPU fallback).
set -euo pipefail
cd "$(dirname "$0")/.."

# One warm build outside the checkout serves every run on this machine.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tastebud/target}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/tastebud-xdg}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
WASM_BINDGEN_VERSION=$(sed -n '/^name = "wasm-bindgen"$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "system packages"
missing=()
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || missing+=(mesa-vulkan-drivers)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi

step "rust tools"
rustup component add rustfmt clippy
rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
  # Not --locked: its lock file pins a crate version the registry lacks.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
# Trunk builds the demo site and the JS package (web/build.sh). 0.21.14: newer needs rustc
# 1.96. Without default features (no TLS, no update check: nothing is downloaded) and
# unoptimised, it builds in ~2.5 minutes instead of ~17 (fat LTO); it only orchestrates.
if [ "$(trunk --version 2>/dev/null)" != "trunk 0.21.14" ]; then
  cargo install --locked trunk --version 0.21.14 --no-default-features --debug
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "rust tests (flex and wgpu/lavapipe)"
cargo test --workspace

step "wasm build (trunk build: dist/ and web/pkg)"
web/build.sh

step "browser tests (headless Chromium)"
cargo build --workspace  # same features as the tests: no rebuild
TASTEBUD_BIN="$CARGO_TARGET_DIR/debug/tastebud" node --test tests/browser/

step "all tests passed"
