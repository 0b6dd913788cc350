#!/usr/bin/env bash
# All benchmarks at paper scale (MiniSD-size model, random weights) on one GPU, in priority order, within a
# time budget; every result is one JSON line in $DIR/gpu.jsonl, the full output in $DIR/gpu.log, and
# Markdown tables (targets checked) in $DIR/summary.md, printed at the end.
#
#   bash benchmarks/run_gpu.sh
#
# DIR is $OUT when set (the device machine's folder that comes back), else benchmarks/results/gpu-<UTC time>.
# Wheels in .whl/ (made by benchmarks/fetch_wheels.sh, for a machine without diffusers) are installed first.
# BENCH_BUDGET_S (default 540: a device call of timeout_s 600) bounds the whole run: a step that would not fit is skipped (and listed),
# and a running step is stopped at the budget. BENCH_DRY_RUN=1 prints the steps without running them.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${BENCH_BUDGET_S:-540}
PY=${PYTHON:-python3}
CONFIG=${BENCH_CONFIG:-minisd}   # tiny + BENCH_DEVICE=cpu exercise this script on a CPU (the test suite does)
DEVICE=${BENCH_DEVICE:-cuda}
DRY=${BENCH_DRY_RUN:-}
START=$SECONDS
DIR=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
RESULTS=$DIR/gpu.jsonl
LOG=$DIR/gpu.log
SKIPPED=()
FAILED=()
export PYTHONUNBUFFERED=1

if [[ -z $DRY ]]; then
    mkdir -p "$DIR"
    : >"$RESULTS"
    : >"$LOG"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "error: installing the wheels in .whl/ failed; rerun benchmarks/fetch_wheels.sh"; exit 2; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "import diffusers" 2>/dev/null \
        || { echo "error: diffusers is missing; run benchmarks/fetch_wheels.sh where pip works and carry .whl"; exit 2; }
    if [[ $DEVICE == cuda* ]]; then
        "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
            || { echo "error: no CUDA GPU visible; this script measures GPU figures"; exit 2; }
        nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >>"$LOG" 2>&1
    fi
    echo "results -> $DIR (budget ${BUDGET}s)"
fi

# step NAME ESTIMATED_SECONDS COMMAND...: run COMMAND if the estimate still fits the budget; JSON lines
# go to $RESULTS, everything to $LOG, one status line to the terminal
step() {
    local name=$1 estimate=$2
    shift 2
    if [[ -n $DRY ]]; then
        echo "$name: $*"
        return 0
    fi
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < estimate)); then
        echo "skip  $name (${left}s left, needs ~${estimate}s)" | tee -a "$LOG"
        SKIPPED+=("$name")
        return 0
    fi
    local began=$SECONDS
    echo "== $name: $*" >>"$LOG"
    timeout --kill-after=15 "$left" "$@" 2>>"$LOG" | tee -a "$LOG" | grep '^{' >>"$RESULTS"
    local rc=${PIPESTATUS[0]} status=ok
    if ((rc == 124 || rc == 137)); then
        status=STOP
        FAILED+=("$name (stopped at the time budget)")
    elif ((rc != 0)); then
        status=FAIL
        FAILED+=("$name (exit $rc)")
    fi
    printf '%-5s %-28s %4ss\n' "$status" "$name" "$((SECONDS - began))" | tee -a "$LOG"
}

# DataLoader workers hand batches over through /dev/shm; a small one (containers) crashes them, so go serial
WORKERS=8
SHM_MB=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [[ -z $SHM_MB || $SHM_MB -lt 2048 ]]; then
    WORKERS=0
    [[ -z $DRY ]] && echo "note: /dev/shm has ${SHM_MB:-no} MB free; training benchmarks use --num-workers 0" | tee -a "$LOG"
fi
TRAIN=("$PY" benchmarks/bench_train.py --config "$CONFIG" --device "$DEVICE" --num-workers "$WORKERS")
REC=("$PY" benchmarks/bench_reconstruct.py --config "$CONFIG" --device "$DEVICE" --batch-size 64)

# issue 22, in priority order: the three targets with featinv's GPU defaults (training: channels_last, bf16
# frozen networks, fused AdamW; sampling: NHWC + bf16 denoiser), then the ablation (each switch off in turn,
# then compile on), ours vs the naive loop with the same workers, the cached-latents path, the profile, the
# old sampler path and fp32 for comparison, the FLOPs (peak fractions); whatever does not fit is listed
B8=(--mode ours --mixed-precision bf16 --batch-size 8 --steps 15 --warmup 3 --images 64)
step reconstruct-bf16 60 "${REC[@]}" --precision bf16 --sampling-defaults --schedules ddim:50 dpm++:20 --warmup 1 --repeats 3
step train-b64-bf16 65 "${TRAIN[@]}" --mode ours --mixed-precision bf16 --batch-size 64 --steps 8 --warmup 2 --images 256
step train-b8-bf16 45 "${TRAIN[@]}" "${B8[@]}"
step ablate-b8-no-channels-last 45 "${TRAIN[@]}" "${B8[@]}" --no-channels-last
step ablate-b8-frozen-fp32 45 "${TRAIN[@]}" "${B8[@]}" --frozen-precision fp32
step ablate-b8-compile 150 "${TRAIN[@]}" "${B8[@]}" --compile --compile-mode reduce-overhead
step train-b8-bf16-vs-naive 100 "${TRAIN[@]}" --mode all --mixed-precision bf16 --batch-size 8 --steps 10 --warmup 3 --images 64 --cache-latents
step profile 90 "$PY" benchmarks/profile_gpu.py --config "$CONFIG" --device "$DEVICE" --train-batches 8 --steps 2
step ablate-b8-adamw-foreach 45 "${TRAIN[@]}" "${B8[@]}" --optimizer-impl foreach
step reconstruct-bf16-old-path 50 "${REC[@]}" --precision bf16 --schedules ddim:50 --warmup 1 --repeats 2
step train-b8-fp32 45 "${TRAIN[@]}" --mode ours --mixed-precision no --batch-size 8 --steps 10 --warmup 3 --images 64
step train-b64-fp32 60 "${TRAIN[@]}" --mode ours --mixed-precision no --batch-size 64 --steps 6 --warmup 2 --images 256
# FLOPs on the meta device (CPU only, no GPU memory) + peak fractions of the training rates measured above
step flops 45 "$PY" benchmarks/flops.py --config "$CONFIG" --device meta --batch-sizes 8 64 --results "$RESULTS"
step reconstruct-bf16-compile 180 "${REC[@]}" --precision bf16 --sampling-defaults --compile --schedules ddim:50 --warmup 1 --repeats 2

[[ -n $DRY ]] && exit 0
[[ $DEVICE == cuda* ]] && nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv >>"$LOG" 2>&1
"$PY" benchmarks/summarize.py "$RESULTS" | tee "$DIR/summary.md"
echo "total $((SECONDS - START))s; skipped: ${SKIPPED[*]:-none}; failed: ${FAILED[*]:-none}" | tee -a "$LOG"
echo "results: $RESULTS, $LOG, $DIR/summary.md"
