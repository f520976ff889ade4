#!/usr/bin/env bash
# Builds the JS package into web/pkg: the wasm module (profile `wasm`: size over speed, whole
# program; then wasm-opt) and its wasm-bindgen glue, the package's
# own ES modules (web/js: the API, its worker, types), comlink (vendored: a worker cannot see
# the page's import map) and the shipped shapes models (`model: 'default'`).
# Needs the wasm32-unknown-unknown target, wasm-bindgen-cli at the wasm-bindgen crate's version
# (tests/run.sh installs both) and npm. `npm pack web/pkg` makes the tarball; `dist/` is the
# demo as a static site (index.html, its service worker at the root, web/pkg/) to host anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build -p tastebud-web --target wasm32-unknown-unknown --profile wasm
wasm-bindgen --target web --out-dir web/pkg "$target/wasm32-unknown-unknown/wasm/tastebud_web.wasm"
(cd web/js && npm ci --no-audit --no-fund --loglevel=error)
# Smaller download: binaryen's optimiser from npm (Debian's 108 breaks wasm-bindgen's output).
# 25 -> 16 MB raw, 5.4 -> 4.2 MB gzipped, same speed (BENCHMARKS.md); ~3 minutes, so
# WASM_OPT=0 skips it while iterating.
if [ "${WASM_OPT:-1}" != 0 ]; then
  web/js/node_modules/.bin/wasm-opt -Os --enable-simd --enable-bulk-memory \
    --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
    --enable-reference-types --enable-multivalue \
    web/pkg/tastebud_web_bg.wasm -o web/pkg/tastebud_web_bg.opt.wasm
  mv web/pkg/tastebud_web_bg.opt.wasm web/pkg/tastebud_web_bg.wasm
fi
cp web/js/tastebud.js web/js/worker.js web/js/tastebud.d.ts web/js/package.json web/js/README.md web/pkg/
cp web/js/node_modules/comlink/dist/esm/comlink.mjs web/pkg/
# The models the manifest lists (not the training recipe or examples).
rm -rf web/pkg/models && mkdir -p web/pkg/models/shapes
cp models/shapes/manifest.json web/pkg/models/shapes/
node -e '
  const fs = require("fs"), path = require("path");
  for (const { file } of JSON.parse(fs.readFileSync("models/shapes/manifest.json")).files) {
    fs.mkdirSync(path.dirname(`web/pkg/models/shapes/${file}`), { recursive: true });
    fs.copyFileSync(`models/shapes/${file}`, `web/pkg/models/shapes/${file}`);
  }'

# The demo site: the page, its service worker at the root (so it controls the page: offline
# after the first visit) and the package.
rm -rf dist && mkdir -p dist/web
cp index.html dist/
cp web/js/sw.js dist/
cp -r web/pkg dist/web/pkg
