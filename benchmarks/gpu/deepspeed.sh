#!/usr/bin/env bash
# DeepSpeed against no DeepSpeed at InternVL2-2B's sizes (random weights), one GPU, real XTuner (issue #17):
#   qlora-none / qlora-deepspeed_zero1   the first course's QLoRA recipe (NF4, batch 4 x 4); its command shape
#                                        is NPROC_PER_NODE=1 xtuner train CONFIG --deepspeed deepspeed_zero1
#   lora-none  / lora-deepspeed_zero2    the second course's LoRA recipe (16-bit LLM, batch 4 x 2, max_length 8192)
# Each trains 3 warm-up + 8 timed optimizer steps (benchmarks/step_timer.py: synchronised wall clock per step),
# then `convert` merges the ZeRO-2 run's checkpoint (a DeepSpeed folder) with helpers.convert and loads it.
#
# Usage, from the repository root on the GPU machine, in calls that each stay under the 64 MiB carry:
#   call 1: carry .whl-train (requirements/gpu-train.txt)  -> bash benchmarks/gpu/deepspeed.sh $OUT install-train
#   call 2: carry .whl-ds (requirements/deepspeed.txt) -> bash benchmarks/gpu/deepspeed.sh $OUT install-ds qlora
#   call 3:                                                -> bash benchmarks/gpu/deepspeed.sh $OUT lora
#   call 4:                                                -> bash benchmarks/gpu/deepspeed.sh $OUT convert
# (call 2 also builds the random 2B model and the synthetic data, about 1-2 minutes, then the QLoRA pair;
#  each run is 3 warm-up + 8 timed optimizer steps and is cut at 280 s, so two runs and the conversion
#  (cut at 200 s) would not fit one call's 600 s: convert is a call of its own.)
# (install-* install into /tmp/site and /tmp/site-ds, which stay on a warm machine between calls.)
# Results: $OUT/train-deepspeed-<recipe>-<none|zeroN>.json and $OUT/convert-deepspeed.json; copy them to
# benchmarks/results/.
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ARGS=" $* "
has() { [[ "$ARGS" == *" $1 "* ]]; }
if has install-train; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-train/*.whl || exit 1
fi
if has install-ds; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:/tmp/site-ds:$PWD:$PWD/benchmarks  # benchmarks/: the step timer the configs import
has qlora || has lora || has convert || exit 0   # an install-only call stops here
python3 -c "import deepspeed, xtuner; print('deepspeed', deepspeed.__version__, 'xtuner', xtuner.__version__)" || exit 1
M=/tmp/m2b; D=/tmp/synth
[ -f $M/config.json ] || python3 -m helpers.tiny --preset internvl2-2b --out $M --device cuda > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
# 64 samples of one length: 1344x896 photos -> 7 x 256 image tokens, 128-token answers
[ -f $D/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D --samples 64 --width 1344 --height 896 \
  --caption-tokens 128 > "$OUT/synthetic.json"
run() { local recipe=$1 ds=$2; local name=$recipe-$ds; echo "=== $name"
  local flag=(); [ "$ds" != none ] && flag=(--deepspeed "$ds")
  timeout 280 python3 benchmarks/bench_deepspeed.py --model $M --data $D --recipe "$recipe" "${flag[@]}" \
    --workdir /tmp/bench-deepspeed --out "$OUT/train-deepspeed-$name.json" > "$OUT/$name.log" 2>&1
  echo "rc=$?"; tail -1 "$OUT/$name.log"; grep -E "Error|error:" "$OUT/$name.log" | grep -v Warning | tail -3; }
has qlora && { run qlora none; run qlora deepspeed_zero1; }
has lora && { run lora none; run lora deepspeed_zero2; }
if has convert; then
  echo "=== convert"
  timeout 200 python3 - "$OUT/convert-deepspeed.json" > "$OUT/convert.log" 2>&1 <<'PY'
import json, sys, time
from pathlib import Path
from helpers import convert, infer, train
run = Path("/tmp/bench-deepspeed/lora-deepspeed_zero2")
ckpt = train.list_checkpoints(run / "run")[-1]
t0 = time.time()
result = convert.convert(ckpt, "/tmp/merged-ds", config=run / "config.py", overwrite=True)
pipe = infer.load(result.out_dir, backend="transformers", device="cuda")
image = sorted(Path("/tmp/synth/ex_images").iterdir())[0]
answer = pipe.ask(image, "<image>\n图中是什么?", infer.GenSettings(max_new_tokens=16))
out = {"checkpoint": str(ckpt), "checkpoint_is_folder": ckpt.is_dir(), "merged": str(result.out_dir),
       "seconds": round(time.time() - t0, 1), "loaded_and_answered": True, "answer_tokens": answer.tokens}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n"); print(json.dumps(out))
PY
  echo "rc=$?"; tail -2 "$OUT/convert.log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>/dev/null
(cd "$OUT" && tar czf "logs-$(date +%H%M%S).tgz" *.log 2>/dev/null; rm -f *.log)
