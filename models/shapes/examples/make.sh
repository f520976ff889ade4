#!/usr/bin/env bash
# The README's picture: the shipped model's first command (generate, top row) next to optimize
# (ReNO against the shipped CLIP, bottom row), seeds 0-3, 3x upscaled. Rerun after retraining:
#   models/shapes/examples/make.sh
# Needs python with Pillow (the training stack of models/shapes/train).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tastebud/target}
cargo build --bin tastebud  # dev profile: optimised (Cargo.toml)
bin=$CARGO_TARGET_DIR/debug/tastebud
prompt="a red circle to the left of a blue square"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for seed in 0 1 2 3; do
  "$bin" generate --prompt "$prompt" --seed "$seed" --out "$work/gen-$seed.png"
  "$bin" optimize --prompt "$prompt" --seed "$seed" --out "$work/opt-$seed.png" > "$work/opt-$seed.txt"
done
"$bin" judge --prompt "$prompt" "$work"/gen-*.png "$work"/opt-*.png
python - "$work" models/shapes/examples/red-circle-left-of-blue-square.png <<'EOF'
import os, sys
from PIL import Image
work, out = sys.argv[1:]
scale, gap = 3, 4
side = 64 * scale
grid = Image.new("RGB", (4 * side + 3 * gap, 2 * side + gap), "white")
for row, kind in enumerate(["gen", "opt"]):
    for seed in range(4):
        tile = Image.open(f"{work}/{kind}-{seed}.png").convert("RGB").resize((side, side), Image.NEAREST)
        grid.paste(tile, (seed * (side + gap), row * (side + gap)))
grid.save(out + ".tmp.png")
os.replace(out + ".tmp.png", out)
print(f"wrote {out}")
EOF
