#!/usr/bin/env bash
# Runs the training command (tools/train.sh) twice from scratch, side by side on one GPU machine
# without Rust or network: the second run is the reproducibility check the shipped model must pass.
# Run from the repository root on that machine, with (both made by tools/pack_gpu_carry.sh, and
# carried: `carry: [".whl", ".devbin"]`):
#   .whl/site.tar.xz      diffusers and importlib_metadata, unpacked (the machine has torch and
#                         transformers)
#   .devbin/diffedit.xz   a stripped x86-64 release build of the CLI (for `diffedit scenes`)
# Writes train-a.log, train-b.log, model-a.tgz.N, model-b.tgz.N (and samples-*.png) to $OUT.
# Arguments go to train.sh (and so to train_tiny_sd.py). DEADLINE=seconds (default 540): each run
# fits its UNet step count to finish 20 s before it (train_tiny_sd.py --deadline; the log names the
# count, for reproducing the run with --unet-steps); at the deadline both runs are stopped and
# whatever checkpoint each has is packed, as model-*-partial.tgz. Both runs take the step count the
# first one fits (--share-steps), so they train the same schedule.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:?OUT must name the folder results go to}
DEADLINE=${DEADLINE:-540}
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
    [ -n "$last" ] && cp "$last" "$DEST/samples-$1.png"
    return 0
}

pids=()
rm -f /tmp/unet-steps
for run in a b; do
    WORK=/tmp/train-$run OUT=/tmp/train-$run/model DIFFEDIT_BIN=/tmp/diffedit EVAL=0 PYTHON=python3 \
        tools/train.sh --deadline $((DEADLINE - 20)) --share-steps /tmp/unet-steps "$@" > "$DEST/train-$run.log" 2>&1 &
    pids+=($!)
done
( sleep "$DEADLINE"; echo "deadline ${DEADLINE}s: stopping"; kill "${pids[@]}" 2>/dev/null; pkill -f train_tiny_sd.py ) &
watchdog=$!

status=0
remaining=("${pids[@]}")
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
for run in a b; do
    if grep -q "(final)" "$DEST/train-$run.log"; then pack "$run" ""; else pack "$run" -partial; fi
    tail -n 4 "$DEST/train-$run.log"
done
ls -la "$DEST"
exit $status
