#!/usr/bin/env bash
# The `--profile gpu` rehearsal of the course on one lent GPU (book/guides/reproduce-on-one-gpu.md):
# InternVL2-2B's real sizes (helpers.tiny's internvl2-2b preset, random weights), 200 records in the real
# CLoT_cn_2000 layout at 450x525 pixels (12 tiles + thumbnail = 13 x 256 image tokens), every workflow
# notebook through the runner, training with the course's recipe (batch 4 x 4, fp16 AMP, NF4 QLoRA,
# `--deepspeed deepspeed_zero1` as the notes run it) capped at MAX_STEPS iterations, LMDeploy's PyTorch
# engine answering in notebooks 02 and 07 from the serving kernel, then LMDeploy vs transformers on the
# converted model (benchmarks/agree.py).
# The lent machine has Python 3.12 + torch 2.11 + transformers 5.x and no internet, so the book's two
# environments are emulated with carried wheels (64 MiB per call; /tmp survives between calls made within
# the warm machine's idle window):
#   training  = the machine's python + /tmp/site (requirements/gpu-train.txt) + /tmp/siteds (DeepSpeed)
#   serving   = the machine's python + /tmp/sitelmd (requirements/gpu-lmdeploy.txt, its transformers 5.x),
#               registered as the `book-serve` kernel, as `make gpu-env` does with .venv-serve
#   both      + /tmp/sitejup (requirements/gpu-notebooks.txt: papermill and the Jupyter kernel)
# Three consecutive calls, from the repository root:
#   1. carry .whl-train:                 bash benchmarks/gpu/rehearsal.sh prepare $OUT
#   2. carry .whl-jup .whl-lmd .whl-ds:  bash benchmarks/gpu/rehearsal.sh train $OUT     (notebooks 00-04)
#   3. (nothing carried):                bash benchmarks/gpu/rehearsal.sh finish $OUT    (05-07, agreement, report)
set -uo pipefail
STAGE=${1:?prepare, train or finish}; OUT=${2:?output folder}; TAG=${TAG:-h200}
MAX_STEPS=${MAX_STEPS:-24}; RECORDS=${RECORDS:-200}
M=/tmp/m2b; D=/tmp/clot; O=/tmp/outgpu; R=/tmp/reh; mkdir -p $R "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
source benchmarks/gpu/common.sh
export PYTHONPATH=$PWD:/tmp/site:/tmp/siteds:/tmp/sitejup JUPYTER_PATH=/tmp/jupyter
sampler() { python3 benchmarks/rehearsal.py sample "$R/gpumem-$STAGE.csv" & SAMPLER=$!; }
run() { python3 -m helpers.book run --profile gpu -p model_path $M -p data_path $D -p output_dir $O \
        -p max_steps "$MAX_STEPS" -p deepspeed deepspeed_zero1 --build-dir "/tmp/nb-$STAGE" "$@" 2>&1 | tee "$R/run-$STAGE.log"; }
case "$STAGE" in
prepare)
    wheels_into /tmp/site .whl-train/*.whl
    t0=$(date +%s)
    python3 -m helpers.tiny --preset internvl2-2b --out $M --device cuda > $R/build.log 2>&1 || { tail -20 $R/build.log; exit 1; }
    python3 benchmarks/synthetic.py --model $M --out $D --samples "$RECORDS" --width 450 --height 525 \
        --caption-tokens 48 > "$R/synthetic.json" || exit 1
    cat "$R/synthetic.json"; echo "prepared in $(( $(date +%s) - t0 )) s"; ls $D | head; du -sh $M $D ;;
train)
    wheels_into /tmp/sitejup .whl-jup/*.whl; wheels_into /tmp/sitelmd .whl-lmd/*.whl; wheels_into /tmp/siteds .whl-ds/*.whl
    mkdir -p /tmp/jupyter/kernels/book-serve
    cat > /tmp/jupyter/kernels/book-serve/kernel.json <<JSON
{"argv": ["$(command -v python3)", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (book, LMDeploy serving)", "language": "python",
 "env": {"PYTHONPATH": "$PWD:/tmp/sitelmd:/tmp/sitejup"}}
JSON
    python3 -c "import deepspeed, xtuner, papermill, transformers as t; print('training env: transformers', t.__version__, 'deepspeed', deepspeed.__version__)"
    PYTHONPATH=$PWD:/tmp/sitelmd:/tmp/sitejup python3 -c "import lmdeploy, transformers as t; print('serving env: lmdeploy', lmdeploy.__version__, 'transformers', t.__version__)"
    sampler; run --only 00,01,02,03,04; kill $SAMPLER ;;
finish)
    sampler; run --only 05,06,07; rc=$?
    PYTHONPATH=$PWD:/tmp/sitelmd:/tmp/sitejup timeout 300 python3 benchmarks/agree.py --model $O/merged \
        --split $O/splits/eval.json --records 8 --out "$OUT/agree-lmdeploy-transformers-$TAG.json" 2>&1 | tail -5
    kill $SAMPLER
    cp "$OUT/agree-lmdeploy-transformers-$TAG.json" $R/ 2>/dev/null
    python3 - "$R/facts.json" "$M" "$D" "$MAX_STEPS" <<'PY'
import json, sys, torch, platform, transformers
from pathlib import Path
out, m, d, steps = sys.argv[1:]
from helpers.env import package_version
facts = {
    "machine": torch.cuda.get_device_name(0),
    "model": "helpers.tiny preset internvl2-2b (InternVL2-2B's real sizes, random weights)",
    "data": f"{d}: benchmarks/synthetic.py, CLoT_cn_2000 layout, 450x525 images",
    "synthetic": json.loads(Path(out).with_name("synthetic.json").read_text()) if Path(out).with_name("synthetic.json").exists() else None,
    "training": f"the gpu profile's course recipe, --deepspeed deepspeed_zero1, capped at max_steps={steps} iterations",
    "versions": {"python": platform.python_version(), "torch": torch.__version__, "training transformers": transformers.__version__,
                 "xtuner": package_version("xtuner"), "bitsandbytes": package_version("bitsandbytes"),
                 "deepspeed": package_version("deepspeed"), "lmdeploy": "0.18.0 (serving kernel)"},
}
Path(out).write_text(json.dumps(facts, indent=2))
PY
    python3 benchmarks/rehearsal.py report --summary /tmp/nb-train/run-summary.json --summary /tmp/nb-finish/run-summary.json \
        --memory $R/gpumem-train.csv --memory $R/gpumem-finish.csv --facts $R/facts.json \
        --out "$OUT/rehearsal-gpu-$TAG.json"
    cp /tmp/nb-finish/07_comparison.ipynb "$OUT/" 2>/dev/null
    cp /tmp/nb-train/run-summary.json "$OUT/run-summary-train.json"; cp /tmp/nb-finish/run-summary.json "$OUT/run-summary-finish.json"
    (cd $R && tar czf "$OUT/logs.tgz" *.log *.csv *.json 2>/dev/null)
    exit $rc ;;
esac
