#!/usr/bin/env bash
# Regenerate the README's worked example pictures in docs/example/ with the release binary.
# Usage: bash tools/make_docs_example.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-tests/fixtures/models/tiny-sd}
mkdir -p docs/example
cp tests/fixtures/pipeline/sd1_exact_96x64_in.png docs/example/input.png
cargo run --release --quiet -- edit --model "$MODEL" --image docs/example/input.png \
    --source "a bowl of fruit on a table" --target "a basket of fruit on a table" --steps 20 --seed 1 \
    --out docs/example/edited.png --save-mask docs/example/mask.png --save-heatmap docs/example/heatmap.png \
    --save-overlay docs/example/overlay.png --json
