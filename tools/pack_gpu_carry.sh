#!/usr/bin/env bash
# Packs what tools/gpu_train_pair.sh needs on a GPU machine without Rust or network, small enough to
# travel with the working tree (the device tool carries 64 MiB in all, and the repository itself is
# about 58 MB): .whl/site.tar.xz (the diffusers and importlib_metadata wheels, unpacked, 2 MB where
# the wheels are 6.4 MB) and .devbin/diffedit.xz (a stripped release build of the CLI, 3.7 MB).
# Both folders are git-ignored through .git/info/exclude. Needs pip access to the package registry.
# Usage (from the repository root): bash tools/pack_gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in .whl .devbin; do
    grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$work/wheels" diffusers==0.42.1 importlib_metadata==10.2.0
mkdir -p "$work/site" .whl .devbin
for wheel in "$work"/wheels/*.whl; do
    # a pure-Python wheel installs by unpacking; Python finds it on PYTHONPATH
    python3 -m zipfile -e "$wheel" "$work/site"
done
tar -cJf .whl/site.tar.xz -C "$work/site" .
cargo build --release --quiet
strip -o "$work/diffedit" "${CARGO_TARGET_DIR:-target}/release/diffedit"
xz -9 -T0 -c "$work/diffedit" > .devbin/diffedit.xz
ls -la .whl/site.tar.xz .devbin/diffedit.xz
