#!/usr/bin/env bash
# The LLaVA route at the real sizes (InternLM2-Chat-1.8B + CLIP ViT-L/14-336, random weights) on one GPU:
# a few pretrain and fine-tune iterations through XTuner, samples/s and peak memory to OUT/llava-*.json.
# Usage (from the repository root, wheels of requirements/no-deps.txt + peft/transformers 4.48 in .whl-train/,
# as for benchmarks/gpu/train_single.sh; the lent machine has torch 2.11 and transformers 5.x, no xtuner):
#   bash benchmarks/gpu/llava.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}; TAG=${TAG:-h200}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl-train ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-train/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
timeout 540 python3 benchmarks/bench_llava.py --out-dir "$OUT" --iters 6 --skip 2 --tag "$TAG" > "$OUT/llava.log" 2>&1
echo "rc=$?"
grep -E '^\{' "$OUT/llava.log"; grep -E "Error|error:" "$OUT/llava.log" | grep -v Warning | tail -5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
(cd "$OUT" && tar czf logs.tgz llava.log /tmp/llava-bench/work_*/train.log 2>/dev/null; rm -f llava.log)
