#!/usr/bin/env bash
# Prove that `cargo build --release --features cuda` compiles and links on a machine with no GPU and no
# system CUDA toolkit, using only NVIDIA's wheels from PyPI. Run by hand (CI never runs it); see docs/cuda.md.
#
# Usage: bash tools/cuda_build_check.sh
# Environment (all optional):
#   VENV=/work/venv-cuda            venv the wheels are installed into (created if absent)
#   CUDA_ROOT_DIR=/work/cuda-root   CUDA_ROOT-like folder assembled from the wheels (rebuilt every run)
#   CARGO_TARGET_DIR=/work/target-cuda
#   CUDA_COMPUTE_CAP=90             GPU generation the kernels are compiled for (90 = H100/H200; no nvidia-smi here)
#   CUDA_VER=13.0.88                nvcc/runtime wheel version (13.0.x..13.4.x: cudarc 0.19.10 knows no later one;
#                                   PTX from a newer nvcc than the GPU driver's CUDA version is refused at run time)
#   SKIP_PIP=1                      reuse the venv as it is
#
# Why each piece is needed (candle 0.11.1, cudarc 0.19.10, cudaforge 0.1.6):
# - candle-kernels' build script (cudaforge) runs nvcc (found on PATH) to make PTX for every kernel and a static
#   libmoe.a (nvcc -c + nvcc --lib), then links `cudart` and `stdc++`. It reads CUDA_COMPUTE_CAP, else nvidia-smi.
# - cudarc's build script (feature cuda-version-from-build-system) parses `nvcc --version`; the release must be one
#   cudarc knows (<= 13.4 for 0.19.10). With `dynamic-linking` it adds <CUDA_ROOT>/lib64 and lib64/stubs to the
#   link search path and links cuda, nvrtc, curand, cublas, cublasLt at link time (not dlopen).
# - PyPI's cu12 nvcc wheels carry only ptxas and libnvvm (no nvcc driver, no cudafe++), so this uses the CUDA 13
#   wheels (nvidia-cuda-nvcc etc., which install into site-packages/nvidia/cu13).
# - No wheel ships the driver library libcuda.so, so a stub with the driver API's symbol names and the soname
#   libcuda.so.1 is built from cudarc's own declarations, as the toolkit's lib64/stubs/libcuda.so would be: the
#   binary then loads the real libcuda.so.1 of the GPU machine's driver at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-/work/venv-cuda}
ROOT=${CUDA_ROOT_DIR:-/work/cuda-root}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
CUDA_VER=${CUDA_VER:-13.0.88}
# The rest of CUDA 13.0 Update 2, as checked on an H200 with driver 580 (CUDA 13.0) on 2026-11-27 (docs/cuda.md).
CUDART_VER=${CUDART_VER:-13.0.96}
CCCL_VER=${CCCL_VER:-13.0.85}
CUBLAS_VER=${CUBLAS_VER:-13.0.0.19}
CURAND_VER=${CURAND_VER:-10.4.0.35}

if [[ -z "${SKIP_PIP:-}" ]]; then
    [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q \
        "nvidia-cuda-nvcc==$CUDA_VER" "nvidia-cuda-crt==$CUDA_VER" "nvidia-nvvm==$CUDA_VER" \
        "nvidia-cuda-runtime==$CUDART_VER" "nvidia-cuda-nvrtc==$CUDA_VER" \
        "nvidia-cuda-cccl==$CCCL_VER" "nvidia-cublas==$CUBLAS_VER" "nvidia-curand==$CURAND_VER"
fi
CU=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[[ -x "$CU/bin/nvcc" ]] || { echo "no nvcc under $CU" >&2; exit 1; }

# CUDA_ROOT layout that cudaforge (bin/nvcc, include/) and cudarc (lib64/, lib64/stubs/) expect.
rm -rf "$ROOT"
mkdir -p "$ROOT/lib64/stubs"
ln -s "$CU/bin" "$ROOT/bin"
ln -s "$CU/include" "$ROOT/include"
ln -s "$CU/nvvm" "$ROOT/nvvm"
ln -s lib64 "$ROOT/lib"
for f in "$CU"/lib/*; do
    name=$(basename "$f")
    ln -s "$f" "$ROOT/lib64/$name"
    # Wheels only carry the versioned names (libcublas.so.13); the linker's -lcublas wants libcublas.so.
    [[ "$name" == *.so.* ]] && ln -sf "$f" "$ROOT/lib64/${name%%.so.*}.so"
done

CUDARC_SRC=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    "$VENV/bin/python" -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')
{
    echo "/* Link-time stand-in for the driver's libcuda.so.1; never loaded when the real driver is installed. */"
    grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" |
        sed -E 's/pub unsafe fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' | sort -u
} >"$ROOT/lib64/stubs/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib64/stubs/libcuda.so" "$ROOT/lib64/stubs/libcuda_stub.c"

export CUDA_ROOT=$ROOT
export PATH=$ROOT/bin:$PATH
echo "nvcc: $(nvcc --version | grep release)"
echo "CUDA_ROOT=$CUDA_ROOT CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
nice -n 15 cargo build --release --features cuda
BIN=$CARGO_TARGET_DIR/release/diffedit
echo "built $BIN; dynamic CUDA libraries it needs:"
readelf -d "$BIN" | grep -E 'NEEDED.*(cuda|cublas|curand|nvrtc)'

# The binary cannot even start without some libcuda.so.1. Give it the stub under that name (never do this on a GPU
# machine) to show that it loads, that the CPU path still gives the README example's picture bit for bit, and that
# --device cuda fails with an error instead of a panic.
mkdir -p "$ROOT/stub-driver"
ln -sf ../lib64/stubs/libcuda.so "$ROOT/stub-driver/libcuda.so.1"
export LD_LIBRARY_PATH=$ROOT/lib64:$ROOT/stub-driver
# The README's first command (tools/make_docs_example.sh), on the bundled model.
EXAMPLE=(--model models/diffedit-shapes --image docs/example/colour.png --source "a yellow circle on a brown background"
    --target "a purple circle on a brown background" -q)
OUT=$(mktemp -d)
nice -n 15 "$BIN" edit --device cpu "${EXAMPLE[@]}" --out "$OUT/edited.png"
cmp "$OUT/edited.png" docs/example/colour_edited.png && echo "cpu run of the cuda build: same picture as docs/example/colour_edited.png"
if RUST_BACKTRACE=0 "$BIN" edit --device cuda "${EXAMPLE[@]}" --out "$OUT/cuda.png" 2>"$OUT/err"; then
    echo "--device cuda unexpectedly succeeded with the stub driver" >&2
    exit 1
fi
echo "--device cuda with the stub driver: $(cat "$OUT/err")"
rm -rf "$OUT"
