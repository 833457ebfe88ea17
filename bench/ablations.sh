#!/usr/bin/env bash
# Every ablation grid of docs/ablations.md at 20 % and 40 %, seeds 0, 1 and 2, on the default protocol: two queues of
# grids, one per CPU core, each `python -m ppcore ablate NAME --resume`. Stop it at any time (Ctrl-C, or the machine
# going away) and run it again: finished seeds are kept from NAME.json, a seed in progress continues from its
# checkpoint (NAME.seedS.partial.pt). On this 2-core machine a batch of 20 x 512 tokens takes about 10 minutes per
# grid on one core (11 to 17 runs), so a seed takes 2 to 3 hours and the whole set about 30 hours of one core, about a
# quarter less where a grid takes the runs another grid's JSON in OUT_DIR already holds (dense, PP, the oracle,
# calibration-only: `ablate` does so by default, docs/ablations.md).
# Usage: bench/ablations.sh [OUT_DIR]   (default bench/results/ablations; logs OUT_DIR/queue0.log, queue1.log)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/results/ablations}
mkdir -p "$OUT"

queue() {  # queue CORE NAME...: the grids one after another, pinned to one core (torch then uses one thread)
    local core=$1; shift
    for name in "$@"; do
        taskset -c "$core" "$PY" -m ppcore ablate "$name" --ratios 0.2,0.4 --seeds 0,1,2 --out-dir "$OUT" --resume
    done
}

# About as many runs per queue (probe 17 + score 13; history, fusion and blocks 11 each).
if [ "$(nproc)" -ge 2 ]; then
    queue 0 probe score > "$OUT/queue0.log" 2>&1 & q0=$!
    queue 1 history fusion blocks > "$OUT/queue1.log" 2>&1 & q1=$!
    trap 'kill 0' INT TERM
    rc=0
    wait "$q0" || { rc=1; echo "queue 0 stopped: see $OUT/queue0.log" >&2; }
    wait "$q1" || { rc=1; echo "queue 1 stopped: see $OUT/queue1.log" >&2; }
    exit "$rc"
else
    queue 0 history fusion blocks probe score 2>&1 | tee "$OUT/queue0.log"
fi
