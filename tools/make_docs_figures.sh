#!/usr/bin/env bash
# Regenerate docs/figures/ (one figure per experiment command, and the evaluation grid) with the
# bundled trained model (models/diffedit-shapes) on edits of its held-out set, so each figure
# shows what the command really does. Seeds are the defaults (0, PyTorch's generator).
# Usage: bash tools/make_docs_figures.sh
# DIFFEDIT_BIN=path/to/diffedit uses an existing binary instead of `cargo run --release`.
# tests/docs_figures.rs reruns the commands of FIGURES below that are cheap and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/figures
mkdir -p "$OUT"
run() {
    if [ -n "${DIFFEDIT_BIN:-}" ]; then "$DIFFEDIT_BIN" "$@"; else cargo run --release --quiet -- "$@"; fi
}
export HF_HUB_OFFLINE=1
# The first nine held-out edits (colour, shape, swap in turn) as pictures and captions.
SCENES=$(mktemp -d)
trap 'rm -rf "$SCENES"' EXIT
run scenes --edits heldout --count 9 --out "$SCENES"
# Each line: figure(s) the command writes | held-out edit it runs on | the command's arguments.
# IN, SOURCE and TARGET stand for that edit's picture and captions.
FIGURES=(
    "generate.png|8|generate --prompt TARGET --out $OUT/generate.png"
    "mask.png thresholds.png|3|mask --image IN --source SOURCE --target TARGET --out $OUT/mask.png --thresholds-out $OUT/thresholds.png"
    "invert_check.png invert_strip.png|8|invert --image IN --prompt SOURCE --check --out $OUT/invert_check.png --strip $OUT/invert_strip.png"
    "edit.png edit_steps.png|4|edit --image IN --source SOURCE --target TARGET --out $OUT/edit.png --save-steps $OUT/edit_steps.png"
    "ablate.png|4|ablate --image IN --source SOURCE --target TARGET --out $OUT/ablate.png"
    "compare.png|3|compare --image IN --source SOURCE --target TARGET --mask-blur 1.5 --out $OUT/compare.png"
    "report.png|4|report --image IN --source SOURCE --target TARGET --img2img --out $OUT/report.png"
    "eval_grid.png|-|eval --limit 9 --figure $OUT/eval_grid.png --figure-rows 9"
)
for line in "${FIGURES[@]}"; do
    IFS='|' read -r _ index command <<<"$line"
    read -r -a words <<<"$command"
    args=()
    for w in "${words[@]}"; do
        if [ "$index" != "-" ]; then
            stem="$SCENES/heldout_$(printf %03d "$index")"
            case "$w" in
                IN) w="${stem}_source.png" ;;
                SOURCE) w="$(cat "${stem}_source.txt")" ;;
                TARGET) w="$(cat "${stem}_target.txt")" ;;
            esac
        fi
        args+=("$w")
    done
    # Every command but eval runs on the bundled model named outright.
    if [ "${args[0]}" = eval ]; then run "${args[@]}" --quiet; else run "${args[@]}" --model models/diffedit-shapes -q; fi
done
ls -la "$OUT"
