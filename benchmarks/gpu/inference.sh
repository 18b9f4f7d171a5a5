#!/usr/bin/env bash
# Issue #16 item 5: benchmarks/bench_infer.py on the OFFICIAL InternVL2 model code at InternVL2-2B's sizes
# (random weights), transformers (4.48, the official code's eager attention: no flash-attn for torch 2.11)
# against LMDeploy 0.18's PyTorch engine (the machine's transformers 5.x), batch 1 and 16, warm-up
# excluded, the image preprocessing timed apart, decode tokens/s against the memory-bandwidth bound.
# Run it on the warm machine right after levers.sh or deepspeed.sh, which leave transformers 4.48 in
# /tmp/site and the official model in /tmp/m2b-official:
#   carry .whl-lmd (requirements/gpu-lmdeploy.txt, lmdeploy repacked by repack_lmdeploy.py) [and .whl-t48]:
#   bash benchmarks/gpu/inference.sh $OUT
# Results: $OUT/inference-official-{transformers,lmdeploy-pytorch}-h200.json; copy them to benchmarks/results/.
set -uo pipefail
OUT=${1:?output folder}; TAG=${TAG:-h200}; mkdir -p "$OUT"; START=$(date +%s)
BACKENDS=${BACKENDS:-transformers lmdeploy}  # e.g. BACKENDS=lmdeploy bash benchmarks/gpu/inference.sh $OUT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
source benchmarks/gpu/common.sh
M=/tmp/m2b-official
# on a fresh machine, carry .whl-t48 too (transformers 4.48, tokenizers, huggingface-hub, einops from .whl-train)
[ -d .whl-t48 ] && { wheels_into /tmp/site .whl-t48/*.whl || exit 1; }
[ -f $M/config.json ] || PYTHONPATH=/tmp/site:$PWD python3 -m helpers.tiny --preset internvl2-2b --remote-code official \
  --out $M --device cuda > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
wheels_into /tmp/sitelmd .whl-lmd/*.whl || exit 1
if [[ " $BACKENDS " == *" transformers "* ]]; then
  echo "=== transformers ($(( $(date +%s) - START )) s)"
  PYTHONPATH=/tmp/site:$PWD timeout 280 python3 benchmarks/bench_infer.py --model $M --backend transformers \
    --out "$OUT/inference-official-transformers-$TAG.json" 2>&1 | tail -3
fi
if [[ " $BACKENDS " == *" lmdeploy "* ]]; then
  echo "=== lmdeploy ($(( $(date +%s) - START )) s)"
  PYTHONPATH=/tmp/sitelmd:$PWD timeout 280 python3 benchmarks/bench_infer.py --model $M --backend lmdeploy \
    --engine pytorch --out "$OUT/inference-official-lmdeploy-pytorch-$TAG.json" 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>/dev/null
echo "done after $(( $(date +%s) - START )) s"
