#!/usr/bin/env bash
# The single-GPU training benchmarks of book/reference/training-benchmarks.md, as run on the lent H100.
# Usage (from the repository root, wheels of requirements/no-deps.txt + peft/transformers 4.48 in .whl-train/):
#   bash benchmarks/gpu/train_single.sh OUTDIR [all | names of runs: seed tuned tuned-b8 16gb loop loop-sdpa loop-sdpa-b2 loop-sdpa-b1 noamp]
set -uo pipefail
OUT=${1:?output folder}; WHAT=${2:-all}; TAG=${TAG:-h100}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl-train ]; then
  source benchmarks/gpu/common.sh
  wheels_into /tmp/site .whl-train/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
M=/tmp/m2b; D=/tmp/synth
[ -f $M/config.json ] || python3 -m helpers.tiny --preset internvl2-2b --out $M --device cuda > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
# 64 samples of one length: 1344x896 photos -> 6 tiles + thumbnail = 7 x 256 image tokens, 128-token captions
[ -f $D/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D --samples 64 --width 1344 --height 896 \
  --caption-tokens 128 | tee "$OUT/synthetic.json"
want() { [ "$WHAT" = all ] || [[ " $WHAT " == *" $1 "* ]]; }
run() { local name=$1; shift; echo "=== $name"; timeout 280 "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?";
        grep -E '"(samples_per_second|tokens_per_second|peak_gpu_memory_gib|mfu|seconds_per_(iteration|step)_median)"' "$OUT/$name.json" 2>/dev/null
        grep -E "Error|error:" "$OUT/$name.log" | grep -v Warning | tail -3; }
want seed && run train-seed-recipe-$TAG python3 benchmarks/bench_train.py --model $M --data $D --iters 24 --skip 1 \
      --name seed-recipe --out "$OUT/train-seed-recipe-$TAG.json" \
      --note "the course's recipe: 4-bit NF4 LLM, LoRA r=128, batch 4 x accumulation 4, fp16 AmpOptimWrapper, XTuner's attention (eager: no flash-attn)"
T="--amp bfloat16 --attn sdpa --workers 12 --persistent-workers"
want tuned && run train-tuned-$TAG python3 benchmarks/bench_train.py --model $M --data $D --iters 24 --skip 1 $T \
      --name tuned --out "$OUT/train-tuned-$TAG.json" \
      --note "tuned: bf16 mixed precision, fused attention (SDPA), 12 persistent data workers, batch 4 x 4"
want tuned-b8 && run train-tuned-b8-$TAG python3 benchmarks/bench_train.py --model $M --data $D --iters 16 --skip 2 $T \
      --batch-size 8 --accumulation 2 --name tuned-b8 --out "$OUT/train-tuned-b8-$TAG.json" \
      --note "the tuned recipe with 8 samples per micro-batch x 2 (same 16 per step)"
want 16gb && run train-tuned-16gb-$TAG python3 benchmarks/bench_train.py --model $M --data $D --iters 32 --skip 1 $T \
      --batch-size 2 --accumulation 8 --name tuned-16gb --out "$OUT/train-tuned-16gb-$TAG.json" \
      --note "the tuned recipe for a 16 GB GPU: 2 samples per micro-batch x 8 (same 16 per step)"
want loop && run train-peft-loop-$TAG python3 benchmarks/bench_peft_loop.py --model $M --data $D --steps 6 --skip 2 \
      --name peft-loop --out "$OUT/train-peft-loop-$TAG.json" \
      --note "plain transformers + peft + bitsandbytes loop, bf16 autocast, eager attention, batch 4 x 4"
want loop-sdpa-b2 && run train-peft-loop-sdpa-b2-$TAG python3 benchmarks/bench_peft_loop.py --model $M --data $D --steps 5 \
      --skip 1 --attn sdpa --batch-size 2 --accumulation 8 --name peft-loop-sdpa-b2 \
      --out "$OUT/train-peft-loop-sdpa-b2-$TAG.json" --note "the SDPA loop with 2 samples per micro-batch x 8"
want loop-sdpa-b1 && run train-peft-loop-sdpa-b1-$TAG python3 benchmarks/bench_peft_loop.py --model $M --data $D --steps 5 \
      --skip 1 --attn sdpa --batch-size 1 --accumulation 16 --name peft-loop-sdpa-b1 \
      --out "$OUT/train-peft-loop-sdpa-b1-$TAG.json" --note "the SDPA loop with 1 sample per micro-batch x 16"
want loop-sdpa && run train-peft-loop-sdpa-$TAG python3 benchmarks/bench_peft_loop.py --model $M --data $D --steps 6 --skip 2 \
      --attn sdpa --name peft-loop-sdpa --out "$OUT/train-peft-loop-sdpa-$TAG.json" \
      --note "the same loop with fused attention (SDPA)"
want noamp && run train-seed-recipe-noamp-$TAG python3 benchmarks/bench_train.py --model $M --data $D --iters 16 --skip 2 --amp none \
      --name seed-recipe-no-amp --out "$OUT/train-seed-recipe-noamp-$TAG.json" \
      --note "the course's recipe without mixed precision: what XTuner ran here before the float32 projector fix"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
# the device tool returns at most 8 files: the logs travel as one archive
(cd "$OUT" && tar czf logs.tgz *.log $(ls synthetic.json 2>/dev/null); rm -f *.log synthetic.json)
