#!/usr/bin/env bash
# Builds the demo site (dist/) and the JS package (web/pkg) with one `trunk build` (Trunk.toml):
# the wasm engine (profile `wasm`: size over speed, whole program) and its wasm-bindgen glue,
# then web/package.sh adds wasm-opt, the package's ES modules, comlink and the shipped models.
# dist/ is the demo as a static site (index.html, its service worker at the root, web/pkg/) to
# host anywhere; web/pkg is the npm package (`npm pack web/pkg` makes the tarball) and what the
# page loads when index.html is served as is from the repository root.
# Needs trunk 0.21.14, the wasm32-unknown-unknown target, wasm-bindgen-cli at the wasm-bindgen
# crate's version and npm (tests/run.sh installs them all). WASM_OPT=0 skips wasm-opt.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v trunk >/dev/null; then
  echo "web/build.sh needs trunk 0.21.14: cargo install --locked trunk --version 0.21.14 --no-default-features" >&2
  exit 1
fi
trunk build
rm -rf web/pkg
cp -r dist/web/pkg web/pkg
