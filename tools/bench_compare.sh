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
#   ISA=avx512bf16 tools/bench_compare.sh  # what an AMD Zen 4 runs, on an Intel CPU with AMX (implies
#                                          # BF16=1): both sides run under examples/no_amx (tools/probes/
#                                          # no_amx.rs: the process may not use the tile units), so each
#                                          # picks AVX512-BF16 by itself; PyTorch also gets
#                                          # ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16. The cap alone is not
#                                          # enough: PyTorch's flash attention still takes AMX under it.
#                                          # ISA=amx forces the tile units on ours (the default where present).
#
# Every run starts with the machine's peak (`PROBE=peak` of examples/kernel_probe.rs: register-only
# FMA and vdpbf16ps loops on all threads) and the table gives each GFLOP/s figure as a share of it
# (f32 rows of the FMA peak, AVX512-BF16 rows of the vdpbf16ps peak). The load average before and
# after goes to stderr: the machine may be shared, so compare runs made at a low load. Both sides
# also record each run's process CPU time (`cpu_times_s`); `cpu ratio` compares their medians,
# which moves far less than the wall-time ratio when other work shares the cores.
#
# Env: PYTHON (default /work/venv-ref/bin/python), CARGO_TARGET_DIR, OUT (JSON lines, default
# bench_results.jsonl). Threads: PyTorch set_num_threads(2); ours uses rayon's default (all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/venv-ref/bin/python}
RUNS=${RUNS:-3}
OUT=${OUT:-bench_results.jsonl}
cargo build --release --quiet
cargo build --release --quiet --example kernel_probe --example no_amx
BIN=${CARGO_TARGET_DIR:-target}/release/diffedit
PROBE_BIN=${CARGO_TARGET_DIR:-target}/release/examples/kernel_probe
# Commands run through $RUN (empty, or no_amx for ISA=avx512bf16).
RUN=()
: > "$OUT"
case "${ISA:-}" in
  "") ;;
  avx512bf16)
    BF16=1; export ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16
    RUN=("${CARGO_TARGET_DIR:-target}/release/examples/no_amx") ;;
  amx) BF16=1; export DIFFEDIT_BF16_ISA=amx ;;
  *) echo "ISA must be avx512bf16 or amx, got $ISA" >&2; exit 2 ;;
esac
echo "load before: $(cat /proc/loadavg); $(grep -m1 'model name' /proc/cpuinfo)" >&2
PROBE=peak "${RUN[@]}" "$PROBE_BIN" | grep '^{' >> "$OUT"

cases=("unet --batch 1 --latent 32" "clip")
if [ -z "${QUICK:-}" ]; then
  cases+=("unet --batch 1 --latent 64" "unet --batch 2 --latent 64" "vae --latent 64" "vae --latent 64 --encode")
fi
if [ -n "${ONLY_EDIT:-}" ]; then cases=(); EDIT=1; fi
if [ -n "${EDIT:-}" ]; then
  for steps in 10 50; do
    echo "== edit 256x256, $steps steps" >&2
    "${RUN[@]}" "$BIN" bench edit --size 256 --steps "$steps" --runs 1 --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
    "${RUN[@]}" "$PY" tools/bench_torch.py edit --size 256 --steps "$steps" --runs 1 2>/dev/null | grep '^{' >> "$OUT"
    if [ -n "${BF16:-}" ] && [ "$steps" = 10 ]; then
      "${RUN[@]}" "$BIN" bench edit --size 256 --steps "$steps" --dtype bf16 --runs 1 --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
      "${RUN[@]}" "$PY" tools/bench_torch.py edit --size 256 --steps "$steps" --dtype bf16 --runs 1 2>/dev/null | grep '^{' >> "$OUT"
    fi
  done
  "${RUN[@]}" "$PY" tools/bench_torch.py edit-diffusers --size 256 --steps 50 --runs 1 2>/dev/null | grep '^{' >> "$OUT"
fi
for c in "${cases[@]}"; do
  echo "== $c" >&2
  "${RUN[@]}" "$BIN" bench $c --dtype f32 --runs "$RUNS" --json | sed 's/^{/{"impl":"ours",/' >> "$OUT"
  "${RUN[@]}" "$PY" tools/bench_torch.py $c --dtype f32 --runs "$RUNS" 2>/dev/null | grep '^{' >> "$OUT"
  if [ -n "${BF16:-}" ] && [[ "$c" == unet* || "$c" == vae* ]]; then
    "${RUN[@]}" "$PY" tools/bench_torch.py $c --dtype bf16 --runs "$RUNS" 2>/dev/null | grep '^{' >> "$OUT"
    "${RUN[@]}" "$BIN" bench $c --dtype bf16 --runs "$RUNS" --json | sed 's/^{/{"impl":"ours",/' >> "$OUT" || true
  fi
done
echo "load after: $(cat /proc/loadavg)" >&2

"$PY" - "$OUT" <<'PYEOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = next((r for r in recs if r["what"] == "peak"), {})
recs = [r for r in recs if r["what"] != "peak"]
if peak:
    print(f"peak on {peak['threads']} threads: FMA {peak['fma_gflops']} GFLOP/s, vdpbf16ps {peak['dpbf16_gflops']} GFLOP/s")
def share(gflops, precision, isa):
    p = peak.get("fma_gflops") if precision == "f32" else peak.get("dpbf16_gflops") if isa == "avx512bf16" else None
    return f"{100 * gflops / p:5.1f}%" if p and gflops == gflops else "    -"
edits = [r for r in recs if r["what"].startswith("edit")]
recs = [r for r in recs if not r["what"].startswith("edit")]
for r in edits:
    ref = next((t for t in edits if t["what"] == "edit" and t.get("impl") == "torch" and t["steps"] == r["steps"]
                and t.get("dtype", "f32") == r.get("dtype", "f32")), None)
    ratio = f"{r['median_s'] / ref['median_s']:.2f}x reference" if ref and r is not ref else ""
    mine32 = next((t for t in edits if t.get("impl") == "ours" and t["steps"] == r["steps"] and t["dtype"] == "f32"), None)
    if r.get("impl") == "ours" and r["dtype"] != "f32" and mine32:
        ratio += f", peak memory {r['peak_rss_mb'] / mine32['peak_rss_mb']:.2f}x ours f32"
    print(f"{r['what']:15} {r.get('impl', ''):6} {r.get('dtype', 'f32'):5} {r.get('isa', ''):10} {'x'.join(map(str, r['size']))} {r['steps']:3} steps: {r['median_s']:8.2f} s, "
          f"{r['unet_evaluations']} UNet rows, peak {r['peak_rss_mb']:.0f} MiB {ratio}")
key = lambda r: (r["what"], tuple(r["shape"]))
ours = {(key(r), r["dtype"]): r for r in recs if r.get("impl") == "ours"}
torch = {(key(r), r["dtype"]): r for r in recs if r.get("impl") == "torch"}
tv = next((r.get("torch") for r in recs if r.get("torch")), "?")
dv = next((r.get("diffusers") for r in recs if r.get("diffusers")), "?")
oi = next((r.get("onednn_max_cpu_isa") for r in recs if r.get("impl") == "torch"), None)
print(f"torch {tv}, diffusers {dv}" + (f", ONEDNN_MAX_CPU_ISA={oi}" if oi else ""))
print(f"{'what':12} {'shape':18} {'dtype':5} {'isa':10} {'ours s':>8} {'GFLOP/s':>8} {'of peak':>7} {'RSS MiB':>8} | "
      f"{'torch s':>8} {'of peak':>7} {'RSS MiB':>8} | {'ratio':>6} {'/ours f32':>9} {'cpu ratio':>9}")
med = lambda v: sorted(v)[len(v) // 2] if v else float("nan")
f32 = {}
for (k, dt), o in ours.items():
    t = torch.get((k, dt)) or torch.get((k, "f32" if dt == "f32" else dt))
    ts = t["median_s"] if t else float("nan")
    # PyTorch's rate from our FLOP count (the same layers). Its bf16 runs where ours does: on
    # AVX512-BF16 on a CPU without AMX (oneDNN's own choice) or under ISA=avx512bf16 (its cap).
    t_share = share(o["gflop"] / ts, o.get("precision", dt), o.get("isa")) if t else "    -"
    mine32 = ours.get((k, "f32"))
    vs32 = f"{o['median_s'] / mine32['median_s']:9.2f}" if mine32 and dt != "f32" else " " * 9
    print(f"{k[0]:12} {'x'.join(map(str, k[1])):18} {dt:5} {o.get('isa', ''):10} {o['median_s']:8.3f} {o['gflops_per_s']:8.1f} "
          f"{share(o['gflops_per_s'], o.get('precision', dt), o.get('isa')):>7} {o['peak_rss_mb']:8.0f} | "
          f"{ts:8.3f} {t_share:>7} {t['peak_rss_mb'] if t else float('nan'):8.0f} | {o['median_s'] / ts:6.2f} {vs32} "
          f"{med(o.get('cpu_times_s', [])) / med(t.get('cpu_times_s', [])) if t else float('nan'):9.2f}")
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
