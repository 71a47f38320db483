#!/usr/bin/env bash
# First run of a `--features cuda` build on a GPU machine that has a driver but no Rust and no network: the binary
# is built elsewhere (docs/cuda.md, tools/cuda_build_check.sh with CUDA 13.0 wheels for a 13.0 driver) and brought
# here gzipped. Checks that it starts, that `edit --device cuda` gives what `--device cpu` gives on the bundled
# model (same seed: every random draw is made on the CPU from the seed, so the two differ only by rounding), and
# times the full-size SD 1.5 UNet and a whole 512x512 edit on the GPU. About a minute in all.
#
# Usage (from the repository root): bash tools/cuda_gpu_check.sh [BIN.gz] [OUTDIR]
#   BIN.gz   gzipped diffedit built with --features cuda (default .devbin/diffedit-cuda.gz); a plain binary works too
#   OUTDIR   where cuda_check.txt (the summary), the pictures and the JSON go (default $OUT, else ./cuda-check-out)
# Environment (optional):
#   CHECK_DEVICE=cuda   the device of the "GPU" half; CHECK_DEVICE=cpu runs every step on the CPU (to test this
#                       script on a machine without a GPU: the bench sizes are then cut down)
#   PYTHON=python3      a Python with numpy and PIL (else looked for: python3, then the venv the CUDA libraries are in)
#   LIB_SEARCH_ROOT=/   where to look for the CUDA libraries the binary needs (default: the usual places, then /)
#   CHECK_BUDGET_S=300  no new edit or bench is started after this many seconds (each also has its own timeout)
# Exit status: 0 when every check passed; 1 when a CUDA run failed or differed from the CPU beyond the tolerances
# printed in the summary; 2 when the binary cannot be made to start (a library missing).
set -uo pipefail

GZ=${1:-.devbin/diffedit-cuda.gz}
OUTDIR=${2:-${OUT:-./cuda-check-out}}
DEV=${CHECK_DEVICE:-cuda}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
[[ -e $GZ ]] && GZ=$(realpath "$GZ")
cd "$(dirname "$0")/.."
SUMMARY=$OUTDIR/cuda_check.txt
WORK=/tmp/diffedit-cuda-check
rm -rf "$WORK"
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 RUST_BACKTRACE=1
T_START=$(date +%s.%N)
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }
fail() {
    say "FAIL: $*"
    FAILED=1
}
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
over_budget() {
    if awk -v e="$(elapsed)" -v b="${CHECK_BUDGET_S:-300}" 'BEGIN { exit !(e > b) }'; then
        fail "$1 skipped: past the time budget (${CHECK_BUDGET_S:-300} s)"
        return 0
    fi
    return 1
}
: >"$SUMMARY"
say "== diffedit CUDA check $(date -u +%FT%TZ) on $(hostname), device $DEV"

# ---- GPU and driver
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"
    nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | sed 's/^/driver /' | tee -a "$SUMMARY"
else
    say "no nvidia-smi"
    [[ $DEV == cuda ]] && fail "no nvidia-smi on a machine meant to have a GPU"
fi

# ---- the binary
BIN=$WORK/diffedit
if [[ ! -f $GZ ]]; then
    say "FAIL: no binary at $GZ"
    exit 2
fi
if gzip -t "$GZ" 2>/dev/null; then gzip -dc "$GZ" >"$BIN"; else cp "$GZ" "$BIN"; fi
chmod +x "$BIN"
say "binary: $GZ -> $BIN ($(stat -c %s "$BIN") bytes, sha256 $(sha256sum "$BIN" | cut -c1-16))"

# ---- the shared libraries it needs. The driver's libcuda.so.1 must come from the system (ldconfig); the toolkit's
# (a CUDA 13.0 build needs libcublas.so.13 and through it libcublasLt.so.13, libcurand.so.10, libcudart.so.13)
# from wherever they are: usually the PyTorch venv's nvidia wheels (site-packages/nvidia/cu13/lib) or
# /usr/local/cuda*/lib64. Whatever `ldd` reports missing is looked for by name.
missing() { ldd "$1" 2>/dev/null | awk '/=> not found/ { print $1 }' | sort -u; }
say "dynamic libraries needed: $(ldd "$BIN" 2>/dev/null | awk '{ print $1 }' | grep -vE '^(linux-vdso|/)' | tr '\n' ' ')"
if ldd "$BIN" | grep -q 'libcuda.so.1 => not found'; then
    fail "libcuda.so.1 (the NVIDIA driver's) is not in the loader's path: $(ldconfig -p 2>/dev/null | grep -c 'libcuda.so.1') entries in ldconfig"
fi
NEED=$(missing "$BIN" | grep -v '^libcuda\.so\.1$' || true)
if [[ -n $NEED ]]; then
    names=()
    for n in $NEED; do names+=(-o -name "$n"); done
    # Stubs (link-time stand-ins that fail every call) and forward-compatibility driver folders are never taken.
    search() {
        say "not found by the loader: $(echo $NEED | tr '\n' ' ')- searching $*"
        timeout 60 find "$@" \( -path /proc -o -path /sys -o -path /dev -o -path "$WORK" \) -prune \
            -o \( -false "${names[@]}" \) -print 2>/dev/null | grep -vE '/(stubs|compat)/' | sort -u >"$WORK/found.txt"
    }
    # The usual places first (a PyTorch venv, a toolkit), the whole disk only if something is still not found.
    if [[ -n ${LIB_SEARCH_ROOT:-} ]]; then
        search "$LIB_SEARCH_ROOT"
    else
        roots=()
        for r in /opt /usr/local /usr/lib /usr/lib64 /root /home /workspace /venv; do [[ -d $r ]] && roots+=("$r"); done
        search "${roots[@]}"
        for n in $NEED; do
            if ! grep -q "/$n\$" "$WORK/found.txt"; then
                search /
                break
            fi
        done
    fi
    sed 's/^/  found: /' "$WORK/found.txt"
    # Pick folders greedily: the one that holds the most of the missing names first (so that cublas and cublasLt
    # come from the same release), then the next for whatever is left.
    LIBDIRS=()
    left=$NEED
    while [[ -n $left ]]; do
        best=$(for n in $left; do grep "/$n\$" "$WORK/found.txt" | xargs -r -n1 dirname; done |
            sort | uniq -c | sort -k1,1nr -k2 | awk 'NR == 1 { print $2 }')
        [[ -z $best ]] && break
        LIBDIRS+=("$best")
        left=$(for n in $left; do [[ -e $best/$n ]] || echo "$n"; done)
    done
    if ((${#LIBDIRS[@]})); then
        LIBPATH=$(
            IFS=:
            echo "${LIBDIRS[*]}"
        )
        export LD_LIBRARY_PATH=$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    fi
fi
ldd "$BIN" 2>/dev/null | grep -E 'cuda|cublas|curand|nvrtc|cudart' | while read -r name _ path _; do
    echo "  $name -> $path ($(readlink -f "$path" 2>/dev/null | xargs -r basename))"
done | tee -a "$SUMMARY"
STILL=$(missing "$BIN")
if [[ -n $STILL ]]; then
    say "FAIL: still missing: $(echo $STILL | tr '\n' ' ')"
    exit 2
fi
if ! "$BIN" --version >>"$SUMMARY" 2>&1; then
    say "FAIL: the binary does not start"
    exit 2
fi

# ---- a Python with numpy and PIL for the comparison
py_ok() { "$1" -c 'import numpy, PIL' >/dev/null 2>&1; }
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    # python3, else the venv that holds the CUDA libraries found above (.../lib/python3.X/site-packages/nvidia/...).
    for cand in python3 $(cat "$WORK/found.txt" 2>/dev/null | sed -n 's#/lib/python3[^/]*/site-packages/.*#/bin/python3#p' |
        sort -u) /opt/*/.venv/bin/python3 /opt/*/venv/bin/python3; do
        if command -v "$cand" >/dev/null 2>&1 && py_ok "$cand"; then
            PY=$cand
            break
        fi
    done
fi
[[ -n $PY ]] && say "python for the comparison: $PY" || fail "no python3 with numpy and PIL: the comparison is skipped"

# ---- the edits: the README's example on the bundled model (trained, so its mask is meaningful), and the SD 2-style
# test fixture (v-prediction, linear attention projections) for a second architecture. --trace writes every
# intermediate tensor in f32, so the CPU and GPU runs are compared tensor by tensor, not only as 8-bit pictures.
SHAPES=(--model models/diffedit-shapes --image docs/example/colour.png --source "a yellow circle on a brown background"
    --target "a purple circle on a brown background" --seed 0 --offline --json -q)
SD2=(--model tests/fixtures/models/tiny-sd2 --image docs/example/shapes.png --source "a green circle on a gray background"
    --target "a red square on a gray background" --steps 20 --seed 0 --offline --json -q)

# run NAME TIMEOUT DEVICE DTYPE ARGS...: one edit, its pictures and trace under $WORK/NAME.*
run() {
    local name=$1 limit=$2 dev=$3 dtype=$4
    shift 4
    local t0 rc
    over_budget "edit $name" && return 1
    t0=$(date +%s.%N)
    timeout "$limit" "$BIN" edit "$@" --device "$dev" --dtype "$dtype" --out "$WORK/$name.png" \
        --save-mask "$WORK/$name.mask.png" --save-heatmap "$WORK/$name.heat.png" --trace "$WORK/$name.st" \
        >"$WORK/$name.json" 2>"$WORK/$name.err"
    rc=$?
    local wall
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if ((rc == 0)); then
        say "edit $name ($dev $dtype): ok in ${wall} s wall; stages (s): $(sed -n 's/.*"timings_s":\({[^}]*}\).*/\1/p' "$WORK/$name.json")"
        cp "$WORK/$name.png" "$WORK/$name.mask.png" "$WORK/$name.heat.png" "$WORK/$name.json" "$OUTDIR/" 2>/dev/null
    else
        fail "edit $name ($dev $dtype) exit $rc after ${wall} s: $(grep -v '^ ' "$WORK/$name.err" | head -5 | tr '\n' ' ')"
        head -c 20000 "$WORK/$name.err" >"$OUTDIR/$name.err"
    fi
    return $rc
}

# compare CPU GPU TOL_NORM TOL_IMG_MEAN TOL_LAT_REL: tolerances and why are in the summary's header lines.
compare() {
    [[ -n $PY ]] || return 0
    "$PY" - "$WORK" "$@" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, struct, sys
import numpy as np
from PIL import Image
work, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
tol_norm, tol_img, tol_lat = map(float, sys.argv[4:7])
def st(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v['data_offsets'][0]:v['data_offsets'][1]], dtype='<f4').reshape(v['shape'])
            for k, v in head.items() if k != '__metadata__'}
def img(name, mode='RGB'):
    return np.asarray(Image.open(f'{work}/{name}').convert(mode), dtype=np.float64)
bad = []
A, B = st(f'{work}/{a}.st'), st(f'{work}/{b}.st')
print(f'compare {b} against {a}:')
for k in sorted(A):
    x, y = A[k], B.get(k)
    if y is None or x.shape != y.shape:
        bad.append(f'{k}: missing or shape {None if y is None else y.shape} != {x.shape}')
        continue
    if not np.isfinite(y).all():
        bad.append(f'{k}: {int((~np.isfinite(y)).sum())} non-finite values')
        continue
    d = np.abs(x - y)
    print(f'  {k:13s} {str(list(x.shape)):20s} max|d| {d.max():.3g}  mean|d| {d.mean():.3g}  rel {d.max() / max(np.abs(x).max(), 1e-12):.3g}')
# The mask: normalised difference map, then a threshold. Cells whose CPU value lies within tol_norm of the
# threshold may flip legitimately; any other flip is a bug.
thr = json.load(open(f'{work}/{a}.json'))['params']['mask_threshold']
dn = np.abs(A['mask_norm'] - B['mask_norm']).max()
if dn > tol_norm:
    bad.append(f'mask_norm differs by {dn:.3g} > {tol_norm}')
flips = (A['mask'] > 0.5) != (B['mask'] > 0.5)
nflip = int(flips.sum())
margin = np.abs(A['mask_norm'] - thr)[flips]
print(f'  mask: {nflip} of {flips.size} latent cells flipped; coverage {float((A["mask"] > 0.5).mean()):.4f} vs '
      f'{float((B["mask"] > 0.5).mean()):.4f}; nearest CPU value to the threshold {np.abs(A["mask_norm"] - thr).min():.3g}')
if nflip and margin.max() > tol_norm:
    bad.append(f'{int((margin > tol_norm).sum())} mask cells flipped that are {margin.max():.3g} from the threshold')
ma, mb = img(f'{a}.mask.png', 'L') > 127, img(f'{b}.mask.png', 'L') > 127
ea, eb = img(f'{a}.png'), img(f'{b}.png')
d = np.abs(ea - eb)
print(f'  mask png: {float((ma != mb).mean()) * 100:.3f}% of pixels differ')
print(f'  edited png: mean |d| {d.mean():.4f} levels, max {d.max():.0f}, {float((d > 2).mean()) * 100:.3f}% of values off by > 2 (of 255)')
h = np.abs(img(f'{a}.heat.png') - img(f'{b}.heat.png'))
print(f'  heatmap png: mean |d| {h.mean():.4f} levels, max {h.max():.0f}')
if eb.std() < 1.0:
    bad.append('the GPU picture is flat (std < 1 level)')
lat = np.abs(A['dec_latents'] - B['dec_latents']).max() / np.abs(A['dec_latents']).max()
if nflip == 0:
    # Identical masks: the pictures must agree closely.
    if d.mean() > tol_img:
        bad.append(f'edited picture mean |d| {d.mean():.3g} > {tol_img} levels')
    if lat > tol_lat:
        bad.append(f'decoding latents rel. difference {lat:.3g} > {tol_lat}')
elif d.mean() > 8:
    # A legitimately flipped cell repaints its 8x8-pixel patch differently; anything beyond that is not rounding.
    bad.append(f'edited picture mean |d| {d.mean():.3g} > 8 levels with {nflip} flipped cells')
for m in bad:
    print('  FAIL:', m)
print(f'  => {"FAIL" if bad else "ok"} (tolerances: mask_norm {tol_norm}, picture mean {tol_img} levels, decoding latents rel. {tol_lat})')
sys.exit(1 if bad else 0)
EOF
    local rc=${PIPESTATUS[0]}
    ((rc == 0)) || FAILED=1
}

say ""
say "== edits (the same seed on both devices: the noise is drawn on the CPU, so only rounding differs)"
say "tolerances: f32 GPU vs f32 CPU: mask_norm 1e-3, picture mean 0.25 levels, decoding latents rel. 1e-2; f16 GPU:"
say "  mask_norm 1e-2, picture mean 1 level, latents rel. 5e-2. Why: the CPU's own f16 run of the bundled model differs"
say "  from its f32 run by 2e-3 in mask_norm, 0.03 levels mean (max 3) in the picture and 7e-3 in the decoding latents,"
say "  and f32 on a GPU should be well inside that; a wrong kernel gives O(1) differences. A mask cell may flip only if"
say "  its CPU value lies within the mask_norm tolerance of the threshold; then only picture mean <= 8 levels is asked."
run shapes-cpu 60 cpu f32 "${SHAPES[@]}"
cpu_ok=$?
# The first GPU run also JIT-compiles candle's PTX for the GPU (cached afterwards in ~/.nv/ComputeCache).
run shapes-"$DEV"-f32 150 "$DEV" f32 "${SHAPES[@]}" && ((cpu_ok == 0)) && compare shapes-cpu shapes-"$DEV"-f32 1e-3 0.25 1e-2
run shapes-"$DEV"-f16 90 "$DEV" f16 "${SHAPES[@]}" && ((cpu_ok == 0)) && compare shapes-cpu shapes-"$DEV"-f16 1e-2 1.0 5e-2
run sd2-cpu 60 cpu f32 "${SD2[@]}" && run sd2-"$DEV"-f32 90 "$DEV" f32 "${SD2[@]}" && compare sd2-cpu sd2-"$DEV"-f32 1e-3 0.25 1e-2

# ---- benchmarks: the full-size SD 1.5 UNet (random weights, 64x64 latents = 512x512 pictures) and a whole edit.
say ""
say "== benchmarks ($DEV)"
if [[ $DEV == cpu ]]; then
    UNET=(--latent 8 --runs 1)
    EDIT=(--size 64 --steps 2 --mask-samples 1 --runs 1)
else
    UNET=(--latent 64 --runs 5)
    EDIT=(--size 512 --steps 10 --runs 2)
fi
bench() {
    local what=$1
    shift
    over_budget "bench $what $*" && return 0
    if timeout 90 "$BIN" bench "$what" --device "$DEV" "$@" --json >"$WORK/bench.json" 2>"$WORK/bench.err"; then
        say "bench $what $*: $(cat "$WORK/bench.json")"
        cat "$WORK/bench.json" >>"$OUTDIR/bench.jsonl"
    else
        fail "bench $what $* on $DEV: $(grep -v '^ ' "$WORK/bench.err" | head -3 | tr '\n' ' ')"
    fi
}
bench unet "${UNET[@]}" --dtype f16
bench unet "${UNET[@]}" --dtype f32
bench edit "${EDIT[@]}" --dtype f16 --tokenizer models/diffedit-shapes/tokenizer

say ""
[[ $DEV == cuda ]] && command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader | sed 's/^/gpu after: /' | tee -a "$SUMMARY"
say "total $(elapsed) s; $( ((FAILED)) && echo 'SOME CHECKS FAILED' || echo 'all checks passed'); summary in $SUMMARY"
exit $FAILED
