#!/usr/bin/env bash
# The LLaVA route at the real sizes (InternLM2-Chat-1.8B + CLIP ViT-L/14-336, random weights) on one GPU:
# a few pretrain and fine-tune iterations through XTuner, samples/s and peak memory to OUT/llava-*.json.
# Both stages run with --deepspeed deepspeed_zero2, as in the notes (benchmarks/bench_llava.py says why).
# Usage (from the repository root; the lent machine has torch 2.11 and transformers 5.x, no xtuner or deepspeed):
# wheels of requirements/gpu-train.txt in .whl-train/ and of requirements/deepspeed.txt in .whl-ds/ (see
# benchmarks/gpu/README.md), installed into /tmp/site and /tmp/site-ds. Together they pass the 64 MiB carry, so
# on a warm machine carry one folder per call; a folder not carried is taken as installed by an earlier call:
#   bash benchmarks/gpu/llava.sh OUTDIR
set -uo pipefail
OUT=${1:?output folder}; TAG=${TAG:-h200}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
source benchmarks/gpu/common.sh
for pair in .whl-train:/tmp/site .whl-ds:/tmp/site-ds; do
  if [ -d "${pair%%:*}" ]; then
    wheels_into "${pair#*:}" "${pair%%:*}"/*.whl || exit 1
  fi
done
export PYTHONPATH=/tmp/site:/tmp/site-ds:$PWD
python3 -c "import xtuner, deepspeed; print('xtuner', xtuner.__version__, 'deepspeed', deepspeed.__version__)" || exit 1
timeout 540 python3 benchmarks/bench_llava.py --out-dir "$OUT" --iters 13 --skip 3 --tag "$TAG" > "$OUT/llava.log" 2>&1
echo "rc=$?"
grep -E '^\{' "$OUT/llava.log"; grep -E "Error|error:" "$OUT/llava.log" | grep -v Warning | tail -5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
(cd "$OUT" && tar czf logs.tgz llava.log /tmp/llava-bench/work_*/train.log 2>/dev/null; rm -f llava.log)
