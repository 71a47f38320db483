#!/usr/bin/env bash
# Regenerate the README's worked example in docs/example/ with the release binary: three edits of
# the bundled model's held-out set (colour change #3, shape change #4, object swap #8, which
# DiffEdit passes; docs/figures/eval_grid.png shows the first nine, failures included), each
# through the README's first command (no --model: Stable Diffusion is not in this machine's
# Hugging Face cache, so the bundled model runs) plus the overlay, at the scenes' own 32x32.
# Usage: bash tools/make_docs_example.sh
# DIFFEDIT_BIN=path/to/diffedit uses an existing binary instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {
    if [ -n "${DIFFEDIT_BIN:-}" ]; then "$DIFFEDIT_BIN" "$@"; else cargo run --release --quiet -- "$@"; fi
}
export HF_HUB_OFFLINE=1
OUT=docs/example
mkdir -p "$OUT"
SCENES=$(mktemp -d)
trap 'rm -rf "$SCENES"' EXIT
run scenes --edits heldout --count 9 --out "$SCENES"
for pick in "colour 3" "shape 4" "swap 8"; do
    read -r kind index <<<"$pick"
    stem="$SCENES/heldout_$(printf %03d "$index")"
    cp "${stem}_source.png" "$OUT/$kind.png"
    cp "${stem}_expected.png" "$OUT/${kind}_expected.png"
    echo "$kind (held-out edit #$index): $(cat "${stem}_source.txt") -> $(cat "${stem}_target.txt")"
    run edit --image "$OUT/$kind.png" --source "$(cat "${stem}_source.txt")" --target "$(cat "${stem}_target.txt")" \
        --out "$OUT/${kind}_edited.png" --save-mask "$OUT/${kind}_mask.png" --save-heatmap "$OUT/${kind}_heatmap.png" \
        --save-overlay "$OUT/${kind}_overlay.png" --json
done
