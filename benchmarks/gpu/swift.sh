#!/usr/bin/env bash
# ms-swift on one GPU, next to XTuner's single-GPU benchmarks (book/reference/training-benchmarks.md):
# `swift sft` LoRA (bf16) and QLoRA (4-bit NF4) at InternVL2-2B's shape (helpers.tiny preset internvl2-2b,
# random weights), on the same synthetic samples as benchmarks/gpu/train_single.sh: 1344x896 photos
# (6 tiles + thumbnail = 7 x 256 image tokens) and 128-token captions, batch 4 x accumulation 4.
# Usage, from the repository root, with the wheels of requirements/gpu-swift.txt in .whl-swift/:
#   bash benchmarks/gpu/swift.sh OUTDIR          writes OUTDIR/swift-lora-$TAG.json and swift-qlora-$TAG.json
set -uo pipefail
OUT=${1:?output folder}; TAG=${TAG:-h200}; STEPS=${STEPS:-12}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MODELSCOPE_OFFLINE=1 MPLBACKEND=Agg
if [ -d .whl-swift ]; then
  # bitsandbytes 0.50.2 (CUDA 13 kernels) for the QLoRA run comes from .whl-train (requirements/gpu-train.txt)
  source benchmarks/gpu/common.sh
  wheels_into /tmp/siteswift .whl-swift/*.whl $(ls .whl-train/bitsandbytes-*.whl 2>/dev/null) || exit 1
  export PYTHONPATH=/tmp/siteswift:$PWD
else
  export PYTHONPATH=$PWD
fi
# 1. does ms-swift import with what the machine has? (names the missing module otherwise)
python3 -c "import swift, transformers, peft, torch; from swift.llm import sft_main; print('ms-swift', swift.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" \
  2>&1 | tee "$OUT/swift-imports.txt" | tail -3
grep -q "^ms-swift" "$OUT/swift-imports.txt" || exit 1
M=/tmp/m2b; D=/tmp/synth
[ -f $M/config.json ] || python3 -m helpers.tiny --preset internvl2-2b --out $M --device cuda > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
[ -f $D/ex_cn.json ] || python3 benchmarks/synthetic.py --model $M --out $D --samples 64 --width 1344 --height 896 \
  --caption-tokens 128 > "$OUT/synthetic.json"
# 2. the same samples as ms-swift JSONL, checked as notebook 12 checks them
python3 -c "from helpers import data, ms_swift; p = data.to_swift_jsonl(data.load_dataset('$D'), '$D/swift.jsonl'); print(ms_swift.check_jsonl(p), 'records')" || exit 1
# 3. swift sft, built by helpers.ms_swift (the notebook's command, with the GPU flags)
sft() {  # name, extra ms-swift arguments...
  local name=$1; shift
  local cmd
  cmd=$(python3 -c "
import shlex, sys
from helpers import ms_swift
c = ms_swift.sft_command('$M', '$D/swift.jsonl', '/tmp/swift-$name', lora_rank=128, lora_alpha=256, lr=2e-5,
                         max_steps=$STEPS, batch_size=4, accumulation=4, max_length=4096, gpu=True, swift='swift')
print(shlex.join(['python3', '-m', 'swift.cli.sft'] + c[2:] + sys.argv[1:]))" "$@")
  echo "=== $name: $cmd"
  MAX_NUM=6 timeout 540 bash -c "$cmd" > "$OUT/swift-$name.log" 2>&1; echo "rc=$?"
  python3 - "$name" "$OUT" <<'PY'
import glob, json, statistics, sys
name, out = sys.argv[1], sys.argv[2]
logs = sorted(glob.glob(f"/tmp/swift-{name}/v*/logging.jsonl"))
rows = [json.loads(l) for l in open(logs[-1])] if logs else []
steps = [r for r in rows if "loss" in r]
end = next((r for r in rows if "train_runtime" in r), {})
speeds = [r["train_speed(iter/s)"] for r in steps[1:]]
result = {
    "name": f"swift-{name}", "framework": "ms-swift 3.2.2", "model": "internvl2-2b shape (helpers.tiny), random weights",
    "samples_per_step": 16, "tiles_per_sample": 7, "steps": len(steps),
    "samples_per_second": end.get("train_samples_per_second"),
    "samples_per_second_after_first_step": 16 * statistics.median(speeds) if speeds else None,
    "peak_gpu_memory_gib": max((r.get("memory(GiB)", 0) for r in steps), default=None),
    "losses": [r["loss"] for r in steps], "train_runtime_s": end.get("train_runtime"),
    "note": "ms-swift's own log: memory(GiB) is torch.cuda.max_memory_reserved; batch 4 x accumulation 4, MAX_NUM=6",
}
json.dump(result, open(f"{out}/swift-{name}-" + __import__("os").environ.get("TAG", "h200") + ".json", "w"), indent=2)
print({k: result[k] for k in ("samples_per_second", "samples_per_second_after_first_step", "peak_gpu_memory_gib")})
PY
  grep -E "Error|error:" "$OUT/swift-$name.log" | grep -v Warning | tail -3
}
export TAG
sft lora
if python3 -c "import bitsandbytes" 2>/dev/null; then
  sft qlora --quant_method bnb --quant_bits 4 --bnb_4bit_compute_dtype bfloat16
else
  echo "no bitsandbytes here: the QLoRA run is skipped (carry .whl-train/bitsandbytes-0.50.2-*.whl)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
(cd "$OUT" && tar czf swift-logs.tgz *.log 2>/dev/null; rm -f *.log)
