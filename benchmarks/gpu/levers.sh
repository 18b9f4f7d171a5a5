#!/usr/bin/env bash
# Issue #16: the course's XTuner recipe, the fast recipe and each speed lever as its own row, at
# InternVL2-2B's real sizes (random weights) with the OFFICIAL InternVL2 model code
# (helpers/official_code), timed by helpers.timing.StepTimerHook (wall clock around
# torch.cuda.synchronize() per optimizer step, 3 warm-up steps left out, 10 timed).
# Usage (from the repository root, on one GPU; wheels of requirements/gpu-train.txt in $WHEELS):
#   WHEELS=.whl-train bash benchmarks/gpu/levers.sh OUTDIR [all | row names ...]
# Rows (1,985-token samples: 6 tiles + thumbnail = 7 x 256 image tokens + 128-token caption, unless "-13"):
#   course fast course-13 fast-13 16gb-13 16gb-13-b2   the recipes (13 = 12 tiles + thumbnail, 3,395 tokens)
#   bf16 sdpa bnb-bf16 head4bit labelled ckpt-nonre ckpt-re ckpt-every2 b8x2 b2x8 w0 w8p compile compile-step pause2   one lever each
#   fastc fastc-13 16gbc-13   the fast recipe and the 16 GB setting with torch.compile of each layer
#   prof-xtuner prof-loop   one optimizer step under torch.profiler, XTuner against the plain transformers+peft loop
# ROW_BUDGET_S (default 520): no row starts once the script has run this long (one device call).
set -uo pipefail
OUT=${1:?output folder}; shift; WHAT=${*:-all}; TAG=${TAG:-h200}; BUDGET=${ROW_BUDGET_S:-520}
mkdir -p "$OUT"; START=$(date +%s)
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl-train}
if [ -d "$WHEELS" ]; then
  source benchmarks/gpu/common.sh
  wheels_into /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
M=/tmp/m2b-official; D5=/tmp/synth5; D13=/tmp/synth13
[ -f $M/config.json ] || python3 -m helpers.tiny --preset internvl2-2b --remote-code official --out $M --device cuda \
  > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
[ -f $D5/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D5 --samples 64 --width 1344 --height 896 \
  --caption-tokens 128 > "$OUT/synthetic5.json"
[ -f $D13/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D13 --samples 64 --width 1792 --height 1344 \
  --caption-tokens 1 > "$OUT/synthetic13.json"
echo "setup done after $(( $(date +%s) - START )) s"
want() { [ "$WHAT" = all ] || [[ " $WHAT " == *" $1 "* ]]; }
# 13 optimizer steps: 3 warm-up + 10 timed (iters = 13 x accumulation)
row() { local name=$1 data=$2 bs=$3 acc=$4; shift 4
  want "$name" || return 0
  local el=$(( $(date +%s) - START ))
  if [ $el -gt $BUDGET ]; then echo "=== $name SKIPPED (no time: ${el}s)"; echo "$name" >> "$OUT/skipped.txt"; return 0; fi
  echo "=== $name (${el}s)"
  timeout 300 python3 benchmarks/bench_train.py --model $M --data "$data" --batch-size "$bs" --accumulation "$acc" \
    --iters $(( 13 * acc )) --name "$name" --workdir /tmp/bench-$name --out "$OUT/train-$name-$TAG.json" "$@" \
    > "$OUT/$name.log" 2>&1; echo "rc=$?"
  python3 - "$OUT/train-$name-$TAG.json" <<'EOF' 2>/dev/null || grep -E "Error|error:" "$OUT/$name.log" | tail -3
import json, sys
d = json.load(open(sys.argv[1])); t = d["step_timing"]
print(f"  {d['samples_per_second']} samples/s, step median {t['median_step_seconds']} s "
      f"(p10 {t['p10_step_seconds']}, p90 {t['p90_step_seconds']}), mfu {d['mfu']}, peak {d['peak_gpu_memory_gib']} GiB")
EOF
}
COURSE=(--amp float16)
FAST=(--amp bfloat16 --attn sdpa --bnb-compute bfloat16 --lm-head bf16 --workers 8 --persistent-workers)
row course "$D5" 4 4 "${COURSE[@]}" --note "the course's recipe: NF4 LLM, LoRA r=128 on every linear layer incl. output, 4 x 4, fp16 AMP, eager attention (official code, no flash-attn), 4 workers"
row fast "$D5" 4 4 "${FAST[@]}" --note "fast: bf16 AMP, SDPA (helpers.compat), 4-bit compute bf16, LM head bf16 without LoRA, 8 persistent workers, 4 x 4"
row course-13 "$D13" 4 4 "${COURSE[@]}" --note "the course's recipe on 13-tile samples"
row fast-13 "$D13" 4 4 "${FAST[@]}" --note "fast on 13-tile samples"
row 16gb-13 "$D13" 1 16 "${FAST[@]}" --loss-logits labelled --note "16 GB setting: fast + logits of the labelled tokens only, 1 sample per micro-batch x 16, 13-tile samples"
row 16gb-13-b2 "$D13" 2 8 "${FAST[@]}" --loss-logits labelled --note "16 GB candidate: fast + labelled logits, 2 x 8, 13-tile samples"
row sdpa "$D5" 4 4 "${COURSE[@]}" --attn sdpa --note "lever: the course + SDPA attention"
row bf16 "$D5" 4 4 --amp bfloat16 --note "lever: the course with bf16 AMP instead of fp16"
row head4bit "$D5" 4 4 "${FAST[@]}" --lm-head 4bit --note "lever: fast with the LM head back in 4-bit with LoRA (the course's)"
row bnb-bf16 "$D5" 4 4 --amp bfloat16 --bnb-compute bfloat16 --note "lever: bf16 AMP + 4-bit compute bf16 (against row bf16)"
row labelled "$D5" 4 4 "${FAST[@]}" --loss-logits labelled --note "lever: fast + the loss from the labelled tokens' logits only (helpers.compat.labelled_cross_entropy)"
row ckpt-nonre "$D5" 4 4 "${FAST[@]}" --checkpoint non-reentrant --note "lever: fast + non-reentrant checkpointing"
row ckpt-re "$D5" 4 4 "${FAST[@]}" --checkpoint reentrant --note "lever: fast + reentrant checkpointing (explicit)"
row ckpt-every2 "$D5" 4 4 "${FAST[@]}" --checkpoint non-reentrant --checkpoint-every 2 --note "lever: fast + every other layer checkpointed"
row b8x2 "$D5" 8 2 "${FAST[@]}" --note "lever: fast with 8 samples per micro-batch x 2"
row b2x8 "$D5" 2 8 "${FAST[@]}" --note "lever: fast with 2 samples per micro-batch x 8"
row w0 "$D5" 4 4 --amp bfloat16 --attn sdpa --bnb-compute bfloat16 --lm-head bf16 --workers 0 --note "lever: fast with no data workers"
row w8p "$D5" 4 4 "${COURSE[@]}" --workers 8 --persistent-workers --note "lever: the course with 8 persistent workers"
row compile "$D5" 4 4 "${FAST[@]}" --compile layers --note "lever: fast + torch.compile of each transformer layer (helpers.compile_layers, Recipe torch_compile=layers)"
row compile-step "$D5" 4 4 "${FAST[@]}" --compile step --note "lever: fast + mmengine's cfg.compile (torch.compile of the whole train_step)"
row fastc "$D5" 4 4 "${FAST[@]}" --loss-logits labelled --compile layers --note "fast recipe (params/gpu-internvl2-2b-fast.yaml: labelled logits) + torch.compile of each transformer layer, 4 x 4"
row fastc-13 "$D13" 4 4 "${FAST[@]}" --loss-logits labelled --compile layers --note "fast recipe + torch.compile of each layer on 13-tile samples, 4 x 4"
row 16gbc-13 "$D13" 2 8 "${FAST[@]}" --loss-logits labelled --compile layers --note "16 GB setting (fast + labelled logits, 2 x 8) + torch.compile of each layer, 13-tile samples"
row pause2 "$D5" 4 4 "${FAST[@]}" --epoch-pause 2 --note "lever: fast with mmengine's 2-second pause at each pass over the data put back (the book's launcher takes it out)"
# torch.profiler over optimizer step 5 (benchmarks/step_profiler.py), XTuner against the plain loop on the same
# settings: bf16 autocast, SDPA, 4-bit compute bf16, LoRA on every linear layer incl. the LM head, 4 x 4
row prof-xtuner "$D5" 4 4 "${FAST[@]}" --lm-head 4bit --profile-step 5 --note "profiled: fast with the LM head in 4 bit with LoRA, as the plain loop has it"
if want prof-loop; then
  echo "=== prof-loop ($(( $(date +%s) - START ))s)"
  timeout 300 python3 benchmarks/bench_peft_loop.py --model $M --data "$D5" --steps 13 --skip 3 --attn sdpa \
    --profile-step 5 --name prof-loop --out "$OUT/train-prof-loop-$TAG.json" > "$OUT/prof-loop.log" 2>&1; echo "rc=$?"
fi
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
echo "done after $(( $(date +%s) - START )) s"
# the device tool returns at most 8 files: everything travels as one archive
(cd "$OUT" && tar czf /tmp/levers-results.tgz . && find . -type f -delete && mv /tmp/levers-results.tgz .)
