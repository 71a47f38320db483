#!/usr/bin/env bash
# Runs the training command (tools/train.sh) twice from scratch, side by side on one GPU machine
# without Rust or network: the second run is the reproducibility check the shipped model must pass.
# Run from the repository root on that machine, with (both made by tools/pack_gpu_carry.sh, and
# carried: `carry: [".whl", ".devbin"]`):
#   .whl/site.tar.xz      diffusers and importlib_metadata, unpacked (the machine has torch and
#                         transformers)
#   .devbin/diffedit.xz   a stripped x86-64 release build of the CLI (for `diffedit scenes`)
# Writes train-a.log, train-b.log, bench.log, model-a.tgz.N, model-b.tgz.N and samples-a.png to $OUT
# (at most 8 files come back from the machine).
# Arguments go to train.sh (and so to train_tiny_sd.py). DEADLINE=seconds from the start (default
# 540): each run fits its UNet step count to finish 20 s before it (train_tiny_sd.py --deadline; the
# log names the count, for reproducing the run with --unet-steps); at the deadline both runs are
# stopped and whatever checkpoint each has is packed, as model-*-partial.tgz. Both runs take the step
# count the first one fits (--share-steps), so they train the same schedule.
# PRECISION=fp32 (default: the shipped model's recipe) or bf16 is passed to train_tiny_sd.py
# --precision. PRECISION=auto first times the graphed UNet step in both (tools/bench_gpu_step.py,
# recipe BENCH_RECIPE=512:64,128, which must match the arguments; about 20 s, while the scenes are
# made) and trains in the faster. If a bf16 pair fails (a diverged loss exits non-zero) with 240 s
# or more left, it is trained again in f32 with the time left.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:?OUT must name the folder results go to}
DEADLINE=${DEADLINE:-540}
START=$(date +%s)
mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site
xz -dc .devbin/diffedit.xz > /tmp/diffedit && chmod +x /tmp/diffedit || exit 1
nvidia-smi -L
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" \
    || exit 1

pack() { # run suffix
    # in pieces of 15 MB (files come back from the machine at most 16 MB each): cat model-a.tgz.* | tar -xz
    [ -f "/tmp/train-$1/model/unet/config.json" ] \
        && tar -cz -C "/tmp/train-$1" model | split -b 15M -d -a 1 - "$DEST/model-$1$2.tgz."
    last=$(ls /tmp/train-$1/samples/samples_*.png 2>/dev/null | tail -1)
    [ "$1" = a ] && [ -n "$last" ] && cp "$last" "$DEST/samples-$1.png"
    return 0
}

# The scenes both runs train on (what train.sh would write first), made while the bench runs.
for run in a b; do
    WORK=/tmp/train-$run DIFFEDIT_BIN=/tmp/diffedit SCENES_ONLY=1 tools/train.sh > /dev/null 2>&1 &
done
PRECISION=${PRECISION:-fp32}
if [ "$PRECISION" = auto ]; then
    python3 tools/bench_gpu_step.py --choose "${BENCH_RECIPE:-512:64,128}" --precisions fp32,bf16 --steps 40 \
        > "$DEST/bench.log" 2>&1
    cat "$DEST/bench.log"
    PRECISION=$(sed -n 's/^fastest: \(fp32\|bf16\)$/\1/p' "$DEST/bench.log")
    PRECISION=${PRECISION:-fp32}
fi
wait
elapsed() { echo $(( $(date +%s) - START )); }

train_pair() { # precision: both runs, side by side, until they end or the deadline; 0 if both finished
    local left=$((DEADLINE - $(elapsed)))
    echo "training in $1, ${left}s to the deadline"
    local pids=() run
    rm -f /tmp/unet-steps
    for run in a b; do
        WORK=/tmp/train-$run OUT=/tmp/train-$run/model DIFFEDIT_BIN=/tmp/diffedit EVAL=0 PYTHON=python3 \
            tools/train.sh --deadline $((left - 20)) --share-steps /tmp/unet-steps --precision "$1" "${ARGS[@]}" \
            >> "$DEST/train-$run.log" 2>&1 &
        pids+=($!)
    done
    # cancelled by killing its sleep, which then fails the &&
    ( sleep "$left" && { echo "deadline ${DEADLINE}s: stopping"; kill "${pids[@]}" 2>/dev/null; pkill -f train_tiny_sd.py; } ) &
    local watchdog=$! status=0 remaining=("${pids[@]}") finished rc
    while [ "${#remaining[@]}" -gt 0 ]; do
        finished=
        wait -n -p finished "${remaining[@]}"
        rc=$?
        remaining=($(for p in "${remaining[@]}"; do [ "$p" != "$finished" ] && echo "$p"; done))
        if [ "$rc" != 0 ]; then
            echo "a training run failed or was stopped (exit $rc): stopping the other"
            kill "${remaining[@]}" 2>/dev/null
            pkill -f train_tiny_sd.py
            status=1
            break
        fi
    done
    pkill -P "$watchdog" 2>/dev/null
    kill "$watchdog" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    return $status
}

ARGS=("$@")
train_pair "$PRECISION"
status=$?
if [ "$status" != 0 ] && [ "$PRECISION" = bf16 ] && [ $((DEADLINE - $(elapsed))) -ge 240 ]; then
    for run in a b; do echo "=== bf16 run failed: again in fp32 ===" >> "$DEST/train-$run.log"; done
    rm -rf /tmp/train-{a,b}/{model,samples}
    train_pair fp32
    status=$?
fi
for run in a b; do
    # the last lines: a failed bf16 attempt's log comes before the f32 one's
    if tail -n 3 "$DEST/train-$run.log" | grep -q "(final)"; then pack "$run" ""; else pack "$run" -partial; fi
    tail -n 4 "$DEST/train-$run.log"
done
ls -la "$DEST"
exit $status
