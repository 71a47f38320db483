#!/usr/bin/env bash
# Trains the shipped model models/diffedit-shapes from scratch, in one command:
#
#     tools/train.sh                 # PYTHON=/path/to/python tools/train.sh to pick the interpreter
#
# 1. builds the `diffedit` CLI, 2. dumps 30000 synthetic 32x32 scenes with seed 1
# (`diffedit scenes`; the held-out evaluation set uses another, fixed seed), 3. trains the VAE,
# then the text encoder and UNet, in PyTorch (tools/train_tiny_sd.py; needs torch, diffusers,
# transformers, safetensors, pillow), 4. writes models/diffedit-shapes in diffusers layout.
# Extra arguments go to train_tiny_sd.py (e.g. --unet-steps 2000 for a quicker, weaker model).
# Takes about 45 minutes on one busy CPU core; progress pictures land in $WORK/samples.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-target/train-work}
OUT=${OUT:-models/diffedit-shapes}
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/diffedit
mkdir -p "$WORK"
if [ ! -f "$WORK/scenes/scenes.jsonl" ] || [ "$(wc -l < "$WORK/scenes/scenes.jsonl")" != 30000 ]; then
    rm -rf "$WORK/scenes"
    "$BIN" scenes --out "$WORK/scenes" --count 30000 --seed 1 --size 32
fi
nice -n 10 "$PYTHON" tools/train_tiny_sd.py --data "$WORK/scenes" --out "$OUT" --samples "$WORK/samples" "$@" \
    2>&1 | tee "$WORK/train.log"
"$BIN" eval --model "$OUT" --limit 30 --quiet
