#!/usr/bin/env bash
# Regenerate the figures of docs/figures/ (one per experiment command) on the committed tiny
# random model. Usage: bash tools/make_docs_figures.sh [MODEL_DIR]
# DIFFEDIT_BIN=path/to/diffedit uses an existing binary instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-tests/fixtures/models/tiny-sd}
OUT=docs/figures
IN=tests/fixtures/pipeline/sd1_exact_96x64_in.png
mkdir -p "$OUT"
run() {
    if [ -n "${DIFFEDIT_BIN:-}" ]; then "$DIFFEDIT_BIN" "$@"; else cargo run --release --quiet -- "$@"; fi
}
PROMPTS=(--source "a bowl of fruit on a table" --target "a basket of fruit on a table")
COMMON=(--model "$MODEL" --image "$IN" "${PROMPTS[@]}" --steps 20 --seed 1 -q)
run generate --model "$MODEL" --prompt "a bowl of fruit on a table" --steps 20 --seed 1 --out "$OUT/generate.png" -q
run mask "${COMMON[@]}" --out "$OUT/mask.png" --thresholds-out "$OUT/thresholds.png"
run invert --model "$MODEL" --image "$IN" --prompt "a bowl of fruit on a table" --steps 20 --seed 1 --check \
    --out "$OUT/invert_check.png" --strip "$OUT/invert_strip.png" -q
run edit --model "$MODEL" --image "$IN" "${PROMPTS[@]}" --steps 25 --seed 1 --out "$OUT/edit.png" \
    --save-steps "$OUT/edit_steps.png" -q
run ablate "${COMMON[@]}" --out "$OUT/ablate.png"
run compare "${COMMON[@]}" --mask-blur 1.5 --out "$OUT/compare.png"
run report "${COMMON[@]}" --img2img --out "$OUT/report.png"
ls -la "$OUT"
