#!/usr/bin/env bash
# Builds the JS package into web/pkg: the wasm module plus its wasm-bindgen glue (ES module).
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at the wasm-bindgen crate's
# version (tests/run.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build -p tastebud-web --target wasm32-unknown-unknown --release
wasm-bindgen --target web --out-dir web/pkg "$target/wasm32-unknown-unknown/release/tastebud_web.wasm"
