#!/usr/bin/env bash
# A complete GPU benchmark on one GPU, sized for under 5 minutes (not yet timed on a GPU): the default model (speed, one
# perplexity run, generation), Gemma-3-270M (speed) and a Llama with LLaMA-2-7B shapes and random
# weights (speed).
# Usage: bench/gpu.sh [OUT_DIR]   (needs `make setup` first, or PY pointing at a python with ppcore's deps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/results/gpu}
mkdir -p "$OUT"
export PPCORE_CACHE=${PPCORE_CACHE:-$PWD/.cache/ppcore}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
run() { echo "+ $*" >&2; "$@"; }
# No host-device sync in the layer loop for any method: CUDA's sync debug mode raises at the first one.
run $PY -m pytest -q tests/test_syncs.py -k gpu 2>&1 | tee "$OUT/syncs.txt"
run $PY -m ppcore speed --device cuda --dtype bfloat16 --batch-size 8 --seq-len 64 --repeats 10 \
    --calib-windows 40 --calib-seq-len 64 --generate 32 --quiet --json "$OUT/speed_default_8x64.json" \
    | tee "$OUT/speed_default_8x64.md"
run $PY -m ppcore speed --device cuda --dtype bfloat16 --batch-size 20 --seq-len 512 --repeats 10 \
    --calib-windows 100 --quiet --json "$OUT/speed_default.json" | tee "$OUT/speed_default.md"
run $PY -m ppcore speed --model random:llama-7b --device cuda --dtype bfloat16 --batch-size 20 --seq-len 1024 \
    --repeats 5 --calib-windows 20 --quiet --json "$OUT/speed_llama7b_shapes.json" | tee "$OUT/speed_llama7b_shapes.md"
run $PY -m ppcore speed --model gemma3-270m --device cuda --dtype bfloat16 --batch-size 20 --seq-len 512 \
    --repeats 5 --calib-windows 40 --quiet --json "$OUT/speed_gemma3.json" | tee "$OUT/speed_gemma3.md"
run $PY -m ppcore eval --device cuda --method pp --ratio 0.4 --batches 10 --quiet --json "$OUT/eval_pp.json"
run $PY -m ppcore generate --device cuda --method pp --ratio 0.4 --max-new-tokens 64 --quiet \
    --prompt "The history of the printing press" --prompt "Photosynthesis is the process" \
    --json "$OUT/generate.json" | tee "$OUT/generate.txt"
# accelerate placement: part of the model on the GPU, the rest offloaded to the CPU and disk; its
# perplexity must equal eval_pp.json's (the walk materialises offloaded layers one at a time).
run $PY -m ppcore eval --device-map auto --max-memory 0=150MB,cpu=150MB --method pp --ratio 0.4 --batches 10 \
    --dtype bfloat16 --quiet --json "$OUT/eval_pp_offloaded.json"
