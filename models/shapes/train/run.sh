#!/usr/bin/env bash
# The shapes world's whole training recipe, resumable: each stage checkpoints and skips itself
# once done, so an interrupted run continues where it stopped. Run from anywhere:
#   models/shapes/train/run.sh            # ~3.5 hours on 2 CPU cores (times in README.md)
#   SHAPES_SCALE=0.01 SHAPES_WORK=/tmp/smoke models/shapes/train/run.sh   # a minutes-long smoke run
# Needs the Python stack of tests/reference (torch, diffusers, transformers, open_clip_torch) on
# PATH as `python`, and builds the `tastebud` binary (dev profile: the core is optimised there
# too) for the training data.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tastebud/target}
(cd ../../.. && cargo build --bin tastebud)
for stage in train_clip train_clip_position train_vae train_unet train_proxy_decoder train_unet_reward_text \
    train_distill; do
  python "$stage.py"
done
python export.py
