#!/usr/bin/env bash
# DeepSpeed against no DeepSpeed at InternVL2-2B's sizes (random weights, the OFFICIAL InternVL2 model
# code), one GPU, real XTuner through benchmarks/bench_train.py (issue #17):
#   qlora-none / qlora-zero1   the first course's QLoRA recipe (NF4, batch 4 x 4, fp16 AMP); its command
#                              shape is NPROC_PER_NODE=1 xtuner train CONFIG --deepspeed deepspeed_zero1
#   lora-none  / lora-zero2    the second course's LoRA recipe (16-bit LLM, batch 4 x 2, max_length 8192)
# Each row trains 3 warm-up + 10 timed optimizer steps, timed by helpers.timing.StepTimerHook (wall clock
# after torch.cuda.synchronize() per optimizer step), on the same 1,985-token samples as levers.sh
# (the model and data folders are shared with it, so a levers.sh call after these skips its set-up).
# `convert` merges the ZeRO-2 run's checkpoint (a DeepSpeed folder) with helpers.convert and loads it.
#
# Usage, from the repository root on the GPU machine, two calls back to back (each carry < 64 MiB):
#   call 1: carry .whl-train -> bash benchmarks/gpu/deepspeed.sh $OUT install-train none
#   call 2: carry .whl-ds    -> bash benchmarks/gpu/deepspeed.sh $OUT install-ds zero convert
# (`convert` needs the lora-zero2 run of the same warm machine: on a fresh one, `install-ds lora-zero2 convert`.)
# (install-* install into /tmp/site and /tmp/site-ds, which stay on a warm machine between calls.)
# Results: $OUT/train-deepspeed-<recipe>-<none|zero1|zero2>-h200.json and $OUT/convert-deepspeed-h200.json;
# copy them to benchmarks/results/.
set -uo pipefail
OUT=${1:?output folder}; shift
mkdir -p "$OUT"; START=$(date +%s)
export PYTHONUNBUFFERED=1
ARGS=" $* "
has() { [[ "$ARGS" == *" $1 "* ]]; }
source benchmarks/gpu/common.sh
has install-train && { wheels_into /tmp/site .whl-train/*.whl || exit 1; }
has install-ds && { wheels_into /tmp/site-ds .whl-ds/*.whl || exit 1; }
export PYTHONPATH=/tmp/site:/tmp/site-ds:$PWD
M=/tmp/m2b-official; D=/tmp/synth5
[ -f $M/config.json ] || python3 -m helpers.tiny --preset internvl2-2b --remote-code official --out $M --device cuda \
  > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
# 64 samples of one length: 1344x896 photos -> 7 x 256 image tokens, 128-token answers (levers.sh's)
[ -f $D/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D --samples 64 --width 1344 --height 896 \
  --caption-tokens 128 > "$OUT/synthetic5.json"
echo "set-up done after $(( $(date +%s) - START )) s"
QLORA=(--batch-size 4 --accumulation 4 --iters 52)
LORA=(--no-4bit --batch-size 4 --accumulation 2 --max-length 8192 --iters 26)
row() { local name=$1; shift; echo "=== $name ($(( $(date +%s) - START )) s)"
  timeout 280 python3 benchmarks/bench_train.py --model $M --data $D --name "deepspeed-$name" \
    --workdir "/tmp/bench-ds-$name" --out "$OUT/train-deepspeed-$name-h200.json" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?"
  # the precision DeepSpeed ran in (XTuner fills the configs' "auto": bf16 wherever the GPU supports it)
  grep -h -o -E "(fp16|bf16)=dict\(enabled=[A-Za-z]+" "/tmp/bench-ds-$name/run-deepspeed-$name"/*/*.log 2>/dev/null | sort -u
  python3 - "$OUT/train-deepspeed-$name-h200.json" <<'EOF' 2>/dev/null || grep -E "Error|error:" "$OUT/$name.log" | tail -3
import json, sys
d = json.load(open(sys.argv[1])); t = d["step_timing"]
print(f"  {d['samples_per_second']} samples/s, step median {t['median_step_seconds']} s, peak {d['peak_gpu_memory_gib']} GiB")
EOF
}
# `none` selects the two rows without DeepSpeed, `zero` the two with it; a row's own name selects it alone
pick() { has "$1" || has "$2"; }
pick qlora-none none && row qlora-none "${QLORA[@]}" --note "the first course's QLoRA recipe without DeepSpeed (the twin of qlora-zero1)"
pick lora-none none && row lora-none "${LORA[@]}" --note "the second course's LoRA recipe without DeepSpeed (the twin of lora-zero2)"
if pick qlora-zero1 zero || pick lora-zero2 zero; then
  python3 -c "import deepspeed, xtuner; print('deepspeed', deepspeed.__version__, 'xtuner', xtuner.__version__)" || exit 1
fi
pick qlora-zero1 zero && row qlora-zero1 "${QLORA[@]}" --deepspeed deepspeed_zero1 --note "the first course's command: --deepspeed deepspeed_zero1"
pick lora-zero2 zero && row lora-zero2 "${LORA[@]}" --deepspeed deepspeed_zero2 --note "the second course's command: --deepspeed deepspeed_zero2"
if has convert; then
  echo "=== convert ($(( $(date +%s) - START )) s)"
  timeout 200 python3 - "$OUT/convert-deepspeed-h200.json" > "$OUT/convert.log" 2>&1 <<'PY'
import json, sys, time
from pathlib import Path
import deepspeed, torch, transformers
from helpers import convert, infer, train
work = Path("/tmp/bench-ds-lora-zero2")
ckpt = train.list_checkpoints(work / "run-deepspeed-lora-zero2")[-1]
t0 = time.time()
result = convert.convert(ckpt, "/tmp/merged-ds", config=work / "config-deepspeed-lora-zero2.py", overwrite=True)
seconds_convert = time.time() - t0
pipe = infer.load(result.out_dir, backend="transformers", device="cuda")
image = sorted(Path("/tmp/synth5/ex_images").iterdir())[0]
answer = pipe.ask(image, "<image>\n图中是什么?", infer.GenSettings(max_new_tokens=16))
out = {"checkpoint": str(ckpt), "checkpoint_is_folder": ckpt.is_dir(),
       "checkpoint_files": sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else [], "merged": str(result.out_dir),
       "convert_seconds": round(seconds_convert, 1), "seconds": round(time.time() - t0, 1),
       "loaded_and_answered": True, "answer_tokens": answer.tokens,
       "device": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
       "versions": {m.__name__: m.__version__ for m in (torch, transformers, deepspeed)}}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n"); print(json.dumps(out))
PY
  echo "rc=$?"; tail -2 "$OUT/convert.log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>/dev/null
echo "done after $(( $(date +%s) - START )) s"
(cd "$OUT" && tar czf "logs-$(date +%H%M%S).tgz" ./*.log 2>/dev/null; rm -f ./*.log)
