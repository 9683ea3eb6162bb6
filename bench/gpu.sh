#!/usr/bin/env bash
# CUDA throughput: tunery against TRL SFTTrainer + PEFT, LoRA in bf16, on the default model and on a
# larger model built from a config with random weights (bench/gpu_model.py; speed only, its loss is
# meaningless). 100 steps of batch 4 of the helpdesk workload, two repetitions each, alternating;
# no validation loss. Meant to finish in under 8 minutes on one GPU.
#
#   bench/gpu.sh [OUT_DIR]       (default bench/results/gpu-DATE; PY=python to choose the interpreter)
#
# SHAPE_FROM=DIR: the default model's shape with random weights instead of its weights, for a GPU
# machine where its package cannot be installed. DIR holds its config and tokenizer, written where
# the model is by `python -m bench.gpu_model --save-shape DIR`. Same work per step, so the same speed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-bench/results/gpu-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c 'import torch, transformers, peft, trl; print("torch", torch.__version__, "transformers", transformers.__version__,
"peft", peft.__version__, "trl", trl.__version__)' | tee -a "$OUT/gpu.txt"
models=(smollm2-135m-instruct)
tokenizer_from=(--tokenizer-from smollm2-135m-instruct)
if [ -n "${SHAPE_FROM:-}" ]; then
  [ -f "$OUT/smollm2-135m-shape/config.json" ] || "$PY" -m bench.gpu_model "$OUT/smollm2-135m-shape" --like "$SHAPE_FROM"
  models=("$OUT/smollm2-135m-shape")
  tokenizer_from=(--tokenizer-from "$SHAPE_FROM")
fi
[ -f "$OUT/random-1b/config.json" ] || "$PY" -m bench.gpu_model "$OUT/random-1b" "${tokenizer_from[@]}"
for model in "${models[@]}" "$OUT/random-1b"; do
  name=$(basename "$model")
  # Each run is capped so that both models fit the 8-minute budget; a capped run fails loudly.
  "$PY" -m bench.run --model "$model" --steps 100 --batch-size 4 --repetitions 2 --same-seed \
    --throughput-only --precision auto --baseline-precision bf16 --methods '' --job-timeout-s 180 \
    --work-dir "$OUT/work-$name" --output "$OUT/$name.md" --results-json "$OUT/$name.json"
done
echo "bench/gpu.sh: wrote $OUT/*.md and $OUT/*.json"
