#!/usr/bin/env bash
# Create (or update) the book's virtual environment from the pinned requirements.
#   bash tools/install.sh [VENV_DIR]          default: .venv (CPU or GPU: PyPI's torch 2.14.1 is a CUDA build)
#   bash tools/install.sh --gpu [VENV_DIR]    the same, then (`make gpu-env`, for a CUDA machine) a second,
#       separate serving environment .venv-serve with LMDeploy (requirements/serve.txt) registered as the
#       Jupyter kernel `book-serve`; the runner executes notebooks 02 and 07 in it when LMDeploy answers.
# Both include DeepSpeed 0.18.9 in VENV_DIR (requirements/deepspeed.txt, built without compiled ops).
# Offline machines: WHEELHOUSE=/path/to/wheels takes every package from that folder (pip --no-index).
# Safe to re-run: it does nothing when the requirements have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=0
if [[ "${1:-}" == "--gpu" ]]; then GPU=1; shift; fi
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
SERVE_VENV="${SERVE_VENV:-.venv-serve}"
OFFLINE=()
[[ -n "${WHEELHOUSE:-}" ]] && OFFLINE=(--no-index --find-links "$WHEELHOUSE")

"$PYTHON" - <<'PY'
import sys
if not ((3, 11) <= sys.version_info[:2] < (3, 13)):
    sys.exit(f"Python {sys.version.split()[0]} found; the book needs Python 3.11 or 3.12 "
             "(xtuner 0.2.0 requires <3.13). Set PYTHON=/path/to/python3.11.")
PY

# shared with tools/install-swift.sh: pipq (quiet pip) and need_disk
source tools/common.sh
PIP_OPTS=(${OFFLINE[@]+"${OFFLINE[@]}"})

# The GPU extra (--gpu): LMDeploy in its own environment, with its own Jupyter kernel.
gpu_extras() {
    local stamp="$SERVE_VENV/.installed" hash
    hash="$(cat requirements/serve.txt pyproject.toml | sha256sum | cut -c1-16)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
        echo "[install --gpu] $SERVE_VENV is up to date"
        return 0
    fi
    "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || echo "[install --gpu] note: torch sees no CUDA GPU here; installing anyway (the GPU notebooks will say why they cannot run)"
    echo "[install --gpu] 1/2 the serving environment $SERVE_VENV (LMDeploy; see requirements/serve.txt)"
    [[ -x "$SERVE_VENV/bin/python" ]] || "$PYTHON" -m venv "$SERVE_VENV"
    pipq "$SERVE_VENV/bin/python" install -r requirements/serve.txt
    pipq "$SERVE_VENV/bin/python" install --no-deps -e .
    "$SERVE_VENV/bin/python" -c "import lmdeploy, helpers.infer" || { echo "[install --gpu] LMDeploy does not import"; exit 1; }
    echo "[install --gpu] 2/2 its Jupyter kernel book-serve, registered in $VENV where the runner looks"
    "$SERVE_VENV/bin/python" -m ipykernel install --prefix "$VENV" --name book-serve \
        --display-name "Python 3 (book, LMDeploy serving)" >/dev/null
    echo "$hash" > "$stamp"
    echo "[install --gpu] done: $("$SERVE_VENV/bin/python" -c 'import lmdeploy, torch, transformers; print(f"lmdeploy {lmdeploy.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")'); kernels: $("$VENV/bin/jupyter" kernelspec list | tail -n +2 | awk '{print $1}' | tr '\n' ' ')"
}

STAMP="$VENV/.installed"
HASH="$(cat requirements/base.txt requirements/no-deps.txt requirements/lock-cpu.txt requirements/deepspeed.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "[install] $VENV is up to date"
    [[ "$GPU" == 1 ]] && gpu_extras
    exit 0
fi

start=$(date +%s)
# The captions are Chinese: matplotlib needs a CJK font to draw them (1.6 MB Debian package).
# Installed when we may (root with apt-get); otherwise figures fall back to record ids and say so.
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null \
        && ! dpkg -s fonts-wqy-microhei >/dev/null 2>&1 && ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; then
    echo "[install] 0/4 CJK font for the figures (fonts-wqy-microhei)"
    { apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1; }; } \
        || echo "[install] could not install fonts-wqy-microhei; figures will label images by id"
fi
# PyPI's torch 2.14.1 is a CUDA build: a new venv takes 7.1 GB; an existing one needs little more
need_gb=8
[[ -d "$VENV/lib" ]] && ls -d "$VENV"/lib/python3.*/site-packages/torch >/dev/null 2>&1 && need_gb=1
need_disk install "$VENV" "$need_gb" "PyPI's torch 2.14.1 is a CUDA build, 5.3 GB with its CUDA libraries"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
C=(-c requirements/lock-cpu.txt)
echo "[install] 1/4 torch + torchvision"
pipq "$VENV/bin/python" install "${C[@]}" torch torchvision
echo "[install] 2/4 xtuner + bitsandbytes + gradio without their conflicting pins (see requirements/no-deps.txt)"
pipq "$VENV/bin/python" install "${C[@]}" --no-deps -r requirements/no-deps.txt
echo "[install] 3/4 everything else (pinned)"
# pip ends this step with two expected lines: "xtuner 0.2.0 requires bitsandbytes==0.45.0" and
# "gradio 6.17.3 requires pillow<13.0,>=8.0".
pipq "$VENV/bin/python" install "${C[@]}" -r requirements/base.txt
"$VENV/bin/python" -c "import xtuner, bitsandbytes, transformers, torchvision, gradio" \
    || { echo "[install] the environment does not import; see the messages above"; exit 1; }
# DeepSpeed for `--deepspeed` (tests/test_deepspeed.py trains ZeRO-2 on the CPU): PyPI ships only its source,
# which builds a pure-Python wheel with DS_BUILD_OPS=0 against the torch installed above (under a minute);
# its dependencies are pinned in the same file (requirements/deepspeed.txt says why 0.18.9).
echo "[install] 3b/4 DeepSpeed, built from source without ops (requirements/deepspeed.txt)"
# --no-build-isolation builds it against this torch; that needs setuptools and wheel in the venv (3.12's has none)
pipq "$VENV/bin/python" install setuptools==84.2.1 wheel==0.48.0
DS_BUILD_OPS=0 pipq "$VENV/bin/python" install --no-deps --no-build-isolation \
    "$(grep -o '^deepspeed==[^ ]*' requirements/deepspeed.txt)"
pipq "$VENV/bin/python" install --no-deps -r <(grep -v '^deepspeed==' requirements/deepspeed.txt)
"$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1 \
    || { echo "[install] deepspeed does not import; see the messages above"; exit 1; }
echo "[install] 4/4 the helpers package (editable)"
pipq "$VENV/bin/python" install --no-deps -e .
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (book)" >/dev/null
echo "$HASH" > "$STAMP"
echo "[install] done in $(( $(date +%s) - start )) s: $("$VENV/bin/python" -c 'import torch,transformers,xtuner,bitsandbytes as b; print(f"torch {torch.__version__}, transformers {transformers.__version__}, xtuner {xtuner.__version__}, bitsandbytes {b.__version__}")')"
[[ "$GPU" == 1 ]] && gpu_extras
exit 0
