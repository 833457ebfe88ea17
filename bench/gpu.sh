#!/usr/bin/env bash
# The GPU benchmark (issue 11), one script for the lent device machine and for any GPU box.
#
# The device machine (one H200) has python3 with torch, transformers and accelerate, no network, and only the
# working tree travels to it (64 MiB), so the embedded models' weights (98 MB and 253 MB of GGUF) never reach it.
# The speed runs therefore use the real models' shapes with random weights (`--model random:NAME`: the same
# products and the same kept counts, so the same times; no tokenizer, so random tokens). Where the real default
# model loads (a box with `make setup` done), the perplexity, generation and offloading checks run too.
#
# Usage: bench/gpu.sh [OUT_DIR]        (default bench/results/gpu; on the device: OUT_DIR=$OUT)
#   PY=...     the python (default: .venv/bin/python when present, else python3, the device's)
#   DEVICE=cpu with SMOKE=1: the whole script at toy sizes on a machine without a GPU, to check the script itself
#              (tests/test_gpu_script.py does that); SMOKE=1 alone shrinks every size on the GPU too.
# Every step runs even when an earlier one failed; the script exits 1 if any did, naming them at the end.
# On the device: run(command="bash bench/gpu.sh $OUT", timeout_s=...): nothing to install, nothing to carry.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${1:-bench/results/gpu}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=()
run() {  # run NAME CMD...: CMD's output into $OUT/NAME.txt and on the terminal; a failure is recorded, not fatal
    local name=$1; shift
    echo "+ $*" | tee "$OUT/$name.txt" >&2
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "[$name: exit $rc after $((SECONDS - t0)) s]" | tee -a "$OUT/$name.txt" >&2
    [ "$rc" -eq 0 ] || failed+=("$name")
}

# Sizes: the real ones, or toys that run every command once in seconds.
if [ "$SMOKE" = 1 ]; then
    SMALL="--batch-size 2 --seq-len 16 --repeats 1 --calib-windows 2 --calib-seq-len 16"
    BIG="$SMALL"
    LLAMA="--batch-size 1 --seq-len 16 --repeats 1 --calib-windows 2 --calib-seq-len 16"
    GEN=2
    DEFAULT_SHAPES=random:smollm2-135m:4; GEMMA_SHAPES=random:gemma3-270m:3; LLAMA_SHAPES=random:llama-7b:1
    SKIP=(--skip-layers 0); LLAMA_SKIP=(--skip-layers "")
    EVAL="--seq-len 16 --batch-size 2 --batches 1 --calib-windows 2 --calib-seq-len 16"
    GEN_CALIB="--calib-windows 2 --calib-seq-len 16"
else
    SMALL="--batch-size 8 --seq-len 64 --repeats 10 --calib-windows 40 --calib-seq-len 64"
    BIG="--batch-size 20 --seq-len 512 --repeats 10 --calib-windows 40"
    LLAMA="--batch-size 20 --seq-len 1024 --repeats 5 --calib-windows 20 --calib-seq-len 1024"
    GEN=32
    DEFAULT_SHAPES=random:smollm2-135m; GEMMA_SHAPES=random:gemma3-270m; LLAMA_SHAPES=random:llama-7b
    SKIP=(); LLAMA_SKIP=()
    EVAL="--batches 10"
    GEN_CALIB=""
fi
DT=(--device "$DEVICE" --dtype "$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)")
SPEED=(-m ppcore speed --methods pp,wanda-sp,flap --ratio 0.4 --quiet)

{ date -u +%FT%TZ; git rev-parse HEAD 2>/dev/null || echo "no git"
  if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"

# No host-device sync in the layer loop for any method, nor in a decode step: CUDA's sync debug mode raises at
# the first one (the test skips itself without a GPU).
if [ "$DEVICE" = cuda ]; then
    run syncs "$PY" -m pytest -q -p no:cacheprovider tests/test_syncs.py -k gpu
fi
# Speed: the default model's shapes at the app's batch (and decoding) and at the protocol's; Gemma-3-270M's; and
# LLaMA-2-7B's at 20 x 1024, where the products dominate as in the paper.
# shellcheck disable=SC2086  # the size strings are word lists on purpose
run speed_default_8x64 "$PY" "${SPEED[@]}" --model "$DEFAULT_SHAPES" "${DT[@]}" "${SKIP[@]}" $SMALL --generate $GEN \
    --json "$OUT/speed_default_8x64.json"
# shellcheck disable=SC2086
run speed_default_20x512 "$PY" "${SPEED[@]}" --model "$DEFAULT_SHAPES" "${DT[@]}" "${SKIP[@]}" $BIG \
    --json "$OUT/speed_default_20x512.json"
# shellcheck disable=SC2086
run speed_gemma3 "$PY" "${SPEED[@]}" --model "$GEMMA_SHAPES" "${DT[@]}" "${SKIP[@]}" $BIG --json "$OUT/speed_gemma3.json"
# shellcheck disable=SC2086
run speed_llama7b "$PY" "${SPEED[@]}" --model "$LLAMA_SHAPES" "${DT[@]}" "${LLAMA_SKIP[@]}" $LLAMA \
    --json "$OUT/speed_llama7b_shapes.json"

# With the real default model only: PP's perplexity, a generation, and accelerate's placement (part of the model
# offloaded; its perplexity must equal the plain run's, the walk materialising offloaded layers one at a time).
if "$PY" -m ppcore info --model default "${DT[@]}" >/dev/null 2>"$OUT/info_default.txt"; then
    # shellcheck disable=SC2086
    run eval_pp "$PY" -m ppcore eval "${DT[@]}" --method pp --ratio 0.4 $EVAL --quiet --json "$OUT/eval_pp.json"
    # shellcheck disable=SC2086
    run generate "$PY" -m ppcore generate "${DT[@]}" --method pp --ratio 0.4 --max-new-tokens $GEN $GEN_CALIB --quiet \
        --prompt "The history of the printing press" --prompt "Photosynthesis is the process" \
        --json "$OUT/generate.json"
    if [ "$DEVICE" = cuda ]; then MEM=0=150MB,cpu=150MB; else MEM=cpu=150MB; fi
    # shellcheck disable=SC2086
    run eval_pp_offloaded "$PY" -m ppcore eval --device-map auto --max-memory $MEM "${DT[@]:2}" --method pp \
        --ratio 0.4 $EVAL --quiet --json "$OUT/eval_pp_offloaded.json"
else
    { echo "the real default model did not load here (on the device: no model files), so the perplexity," \
           "generation and offloading checks were skipped; what 'ppcore info --model default' said:"
      tail -5 "$OUT/info_default.txt"; } | tee "$OUT/skipped.txt"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (their output: $OUT/NAME.txt)" >&2
    exit 1
fi
echo "all steps passed; results in $OUT" >&2
