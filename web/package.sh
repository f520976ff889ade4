#!/usr/bin/env bash
# Trunk's post-build hook (Trunk.toml): completes the JS package next to the engine trunk just
# built in $TRUNK_STAGING_DIR/web/pkg (tastebud-web.js, tastebud-web_bg.wasm, .d.ts): shrinks
# the wasm with binaryen's wasm-opt, adds the package's own ES modules (web/js: the API, its
# worker, types), comlink (vendored: a worker cannot see the page's import map) and the shipped
# shapes models (`model: 'default'`). WASM_OPT=0 skips wasm-opt (~3 minutes) while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=${TRUNK_STAGING_DIR:?run by trunk build (Trunk.toml), not directly}/web/pkg
[ -f "$pkg/tastebud-web_bg.wasm" ] || { echo "web/package.sh: trunk built no $pkg/tastebud-web_bg.wasm" >&2; exit 1; }

# Trunk keeps the engine's <link data-trunk rel="rust"> in the page when it injects no script
# (inject_scripts = false: the package's worker loads the engine); the site's page drops it.
sed -i '/<link data-trunk rel="rust"/d' "$TRUNK_STAGING_DIR/index.html"

(cd web/js && npm ci --no-audit --no-fund --loglevel=error)
# Binaryen's optimiser from npm (Debian's 108 breaks wasm-bindgen's output):
# 25 -> 16 MB raw, 5.4 -> 4.2 MB gzipped, same speed (BENCHMARKS.md).
if [ "${WASM_OPT:-1}" != 0 ]; then
  web/js/node_modules/.bin/wasm-opt -Os --enable-simd --enable-bulk-memory \
    --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
    --enable-reference-types --enable-multivalue \
    "$pkg/tastebud-web_bg.wasm" -o "$pkg/tastebud-web_bg.opt.wasm"
  mv "$pkg/tastebud-web_bg.opt.wasm" "$pkg/tastebud-web_bg.wasm"
fi
cp web/js/tastebud.js web/js/worker.js web/js/tastebud.d.ts web/js/package.json web/js/README.md "$pkg/"
cp web/js/node_modules/comlink/dist/esm/comlink.mjs "$pkg/"
# The models the manifest lists (not the training recipe or examples).
mkdir -p "$pkg/models/shapes"
cp models/shapes/manifest.json "$pkg/models/shapes/"
PKG="$pkg" node -e '
  const fs = require("fs"), path = require("path");
  const to = (file) => path.join(process.env.PKG, "models/shapes", file);
  for (const { file } of JSON.parse(fs.readFileSync("models/shapes/manifest.json")).files) {
    fs.mkdirSync(path.dirname(to(file)), { recursive: true });
    fs.copyFileSync(`models/shapes/${file}`, to(file));
  }'
