#!/usr/bin/env bash
# Runs `diffedit bench` and tools/bench_torch.py on the same shapes, one after the other in this
# session, and prints a table of medians with the ratio ours / PyTorch (< 1 = we are faster).
#
#   tools/bench_compare.sh                 # f32, 3 timed runs each after a warm-up
#   RUNS=5 tools/bench_compare.sh
#   BF16=1 tools/bench_compare.sh          # adds bf16 rows, both sides: UNet and VAE (PyTorch with
#                                          # bf16 weights; ours bf16 products on AMX), and with EDIT=1
#                                          # the 10-step edit (the reference under CPU autocast)
#   QUICK=1 tools/bench_compare.sh         # UNet 1x4x32x32 and CLIP only
#   EDIT=1 tools/bench_compare.sh          # adds whole edits at 256x256: 10 steps (ours, reference)
#                                          # and the tutorial's 50 steps (ours, reference, diffusers'
#                                          # StableDiffusionDiffEditPipeline at its defaults)
#   ONLY_EDIT=1 tools/bench_compare.sh     # the edits alone
#
# Env: PYTHON (default /work/venv-ref/bin/python), CARGO_TARGET_DIR, OUT (JSON lines, default
# bench_results.jsonl). Threads: PyTorch set_num_threads(2); ours uses rayon's default (all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/venv-ref/bin/python}
RUNS=${RUNS:-3}
OUT=${OUT:-bench_results.jsonl}
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/diffedit
: > "$OUT"

cases=("unet --batch 1 --latent 32" "clip")
if [ -z "${QUICK:-}" ]; then
  cases+=("unet --batch 1 --latent 64" "unet --batch 2 --latent 64" "vae --latent 64" "vae --latent 64 --encode")
fi
if [ -n "${ONLY_EDIT:-}" ]; then cases=(); EDIT=1; fi
if [ -n "${EDIT:-}" ]; then
  for steps in 10 50; do
    echo "== edit 256x256, $steps steps" >&2
    "$BIN" bench edit --size 256 --steps "$steps" --runs 1 --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
    "$PY" tools/bench_torch.py edit --size 256 --steps "$steps" --runs 1 2>/dev/null | grep '^{' >> "$OUT"
    if [ -n "${BF16:-}" ] && [ "$steps" = 10 ]; then
      "$BIN" bench edit --size 256 --steps "$steps" --dtype bf16 --runs 1 --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
      "$PY" tools/bench_torch.py edit --size 256 --steps "$steps" --dtype bf16 --runs 1 2>/dev/null | grep '^{' >> "$OUT"
    fi
  done
  "$PY" tools/bench_torch.py edit-diffusers --size 256 --steps 50 --runs 1 2>/dev/null | grep '^{' >> "$OUT"
fi
for c in "${cases[@]}"; do
  echo "== $c" >&2
  "$BIN" bench $c --dtype f32 --runs "$RUNS" --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
  "$PY" tools/bench_torch.py $c --dtype f32 --runs "$RUNS" 2>/dev/null | grep '^{' >> "$OUT"
  if [ -n "${BF16:-}" ] && [[ "$c" == unet* || "$c" == vae* ]]; then
    "$PY" tools/bench_torch.py $c --dtype bf16 --runs "$RUNS" 2>/dev/null | grep '^{' >> "$OUT"
    "$BIN" bench $c --dtype bf16 --runs "$RUNS" --json | sed 's/^{/{"impl":"ours",/' >> "$OUT" || true
  fi
done

"$PY" - "$OUT" <<'PYEOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
edits = [r for r in recs if r["what"].startswith("edit")]
recs = [r for r in recs if not r["what"].startswith("edit")]
for r in edits:
    ref = next((t for t in edits if t["what"] == "edit" and t.get("impl") == "torch" and t["steps"] == r["steps"]
                and t.get("dtype", "f32") == r.get("dtype", "f32")), None)
    ratio = f"{r['median_s'] / ref['median_s']:.2f}x reference" if ref and r is not ref else ""
    print(f"{r['what']:15} {r.get('impl', ''):6} {r.get('dtype', 'f32'):5} {'x'.join(map(str, r['size']))} {r['steps']:3} steps: {r['median_s']:8.2f} s, "
          f"{r['unet_evaluations']} UNet rows, peak {r['peak_rss_mb']:.0f} MiB {ratio}")
key = lambda r: (r["what"], tuple(r["shape"]))
ours = {(key(r), r["dtype"]): r for r in recs if r.get("impl") == "ours"}
torch = {(key(r), r["dtype"]): r for r in recs if r.get("impl") == "torch"}
tv = next((r.get("torch") for r in recs if r.get("torch")), "?")
dv = next((r.get("diffusers") for r in recs if r.get("diffusers")), "?")
print(f"torch {tv}, diffusers {dv}")
print(f"{'what':12} {'shape':18} {'dtype':5} {'ours s':>8} {'GFLOP/s':>8} {'RSS MiB':>8} | {'torch s':>8} {'RSS MiB':>8} | {'ratio':>6}")
f32 = {}
for (k, dt), o in ours.items():
    t = torch.get((k, dt)) or torch.get((k, "f32" if dt == "f32" else dt))
    ts = t["median_s"] if t else float("nan")
    print(f"{k[0]:12} {'x'.join(map(str, k[1])):18} {dt:5} {o['median_s']:8.3f} {o['gflops_per_s']:8.1f} {o['peak_rss_mb']:8.0f} | "
          f"{ts:8.3f} {t['peak_rss_mb'] if t else float('nan'):8.0f} | {o['median_s'] / ts:6.2f}")
    if dt == "f32":
        f32[k] = (o["median_s"], ts)
for (k, dt), t in torch.items():
    if dt != "f32":
        o = ours.get((k, "f32"))
        print(f"{k[0]:12} {'x'.join(map(str, k[1])):18} torch {dt}: {t['median_s']:.3f} s" + (f"  (ours f32 / torch {dt}: {o['median_s'] / t['median_s']:.2f})" if o else ""))
# The 512x512, 50-step edit from per-call times (DiffEdit defaults: 10 mask samples x 2 prompts in
# batches of 4 ~ 10 batch-2 calls, 40 inversion steps at batch 1, 40 guided decoding steps at
# batch 2, one VAE encode and decode, three prompts through the text encoder).
need = {"u1": ("unet", (1, 4, 64, 64)), "u2": ("unet", (2, 4, 64, 64)), "enc": ("vae_encode", (1, 3, 512, 512)),
        "dec": ("vae_decode", (1, 4, 64, 64)), "clip": ("clip_text", (1, 77))}
if all(v in f32 for v in need.values()):
    est = lambda i: (f32[need["enc"]][i] + 3 * f32[need["clip"]][i] + 10 * f32[need["u2"]][i]
                     + 40 * f32[need["u1"]][i] + 40 * f32[need["u2"]][i] + f32[need["dec"]][i])
    print(f"edit 512x512 50 steps (estimate from per-call f32 times): ours {est(0):.0f} s, torch {est(1):.0f} s, ratio {est(0) / est(1):.2f}")
PYEOF
