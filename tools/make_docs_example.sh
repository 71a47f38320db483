#!/usr/bin/env bash
# Regenerate the README's worked example pictures in docs/example/ with the release binary: the
# README's first command, on the bundled model (no --model: Stable Diffusion is not in this
# machine's Hugging Face cache), plus the overlay.
# Usage: bash tools/make_docs_example.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs/example
HF_HUB_OFFLINE=1 cargo run --release --quiet -- edit --image docs/example/shapes.png \
    --source "a green circle on a gray background" --target "a red square on a gray background" \
    --out docs/example/edited.png --save-mask docs/example/mask.png --save-heatmap docs/example/heatmap.png \
    --save-overlay docs/example/overlay.png --json
