#!/usr/bin/env bash
# Trains the shipped model models/diffedit-shapes from scratch, in one command:
#
#     tools/train.sh                 # PYTHON=/path/to/python tools/train.sh to pick the interpreter
#
# 1. builds the `diffedit` CLI, 2. dumps $SCENES synthetic 32x32 scenes with seed 1
# (`diffedit scenes`; the held-out evaluation set uses another, fixed seed), 3. trains the VAE,
# then the text encoder and UNet, in PyTorch (tools/train_tiny_sd.py; needs torch, diffusers,
# transformers, safetensors, pillow), on a CUDA GPU when there is one, else on the CPU,
# 4. writes models/diffedit-shapes in diffusers layout, 5. evaluates it on 30 held-out edits.
# Extra arguments go to train_tiny_sd.py (e.g. --unet-steps 2000 for a quicker, weaker model).
# Every random draw is made on the CPU, so a CPU run follows the same batches as a GPU run, only
# slower (times: models/diffedit-shapes/README.md); progress pictures land in $WORK/samples.
# DIFFEDIT_BIN=path uses a built CLI instead of `cargo build` (a machine without Rust);
# EVAL=0 skips step 5; SCENES_ONLY=1 stops after step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-target/train-work}
OUT=${OUT:-models/diffedit-shapes}
SCENES=${SCENES:-100000}
if [ -n "${DIFFEDIT_BIN:-}" ]; then
    BIN=$DIFFEDIT_BIN
else
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/diffedit
fi
mkdir -p "$WORK"
if [ ! -f "$WORK/scenes/scenes.jsonl" ] || [ "$(wc -l < "$WORK/scenes/scenes.jsonl")" != "$SCENES" ]; then
    rm -rf "$WORK/scenes"
    "$BIN" scenes --out "$WORK/scenes" --count "$SCENES" --seed 1 --size 32
fi
[ "${SCENES_ONLY:-0}" = 1 ] && exit 0
nice -n 10 "$PYTHON" tools/train_tiny_sd.py --data "$WORK/scenes" --out "$OUT" --samples "$WORK/samples" "$@" \
    2>&1 | tee "$WORK/train.log"
if [ "${EVAL:-1}" != 0 ]; then
    "$BIN" eval --model "$OUT" --limit 30 --quiet
fi
