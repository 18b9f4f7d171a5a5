#!/usr/bin/env bash
# Create (or update) the book's virtual environment from the pinned requirements.
#   bash tools/install.sh [VENV_DIR]      default: .venv
# Safe to re-run: it does nothing when the requirements have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
if not ((3, 11) <= sys.version_info[:2] < (3, 13)):
    sys.exit(f"Python {sys.version.split()[0]} found; the book needs Python 3.11 or 3.12 "
             "(xtuner 0.2.0 requires <3.13). Set PYTHON=/path/to/python3.11.")
PY

STAMP="$VENV/.installed"
HASH="$(cat requirements/base.txt requirements/no-deps.txt requirements/lock-cpu.txt requirements/gpu-deepspeed.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "[install] $VENV is up to date"
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
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# pip, without the "Location ... is ignored" lines this machine's pip config prints for every package
pipq() {
    local log rc=0
    log="$(mktemp)"
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" >"$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location" "$log" || true
    rm -f "$log"
    return "$rc"
}
C=(-c requirements/lock-cpu.txt)
echo "[install] 1/4 torch + torchvision"
pipq install "${C[@]}" torch torchvision
echo "[install] 2/4 xtuner + bitsandbytes + gradio without their conflicting pins (see requirements/no-deps.txt)"
pipq install "${C[@]}" --no-deps -r requirements/no-deps.txt
echo "[install] 3/4 everything else (pinned)"
# pip ends this step with two expected lines: "xtuner 0.2.0 requires bitsandbytes==0.45.0" and
# "gradio 6.17.3 requires pillow<13.0,>=8.0".
pipq install "${C[@]}" -r requirements/base.txt
"$VENV/bin/python" -c "import xtuner, bitsandbytes, transformers, torchvision, gradio" \
    || { echo "[install] the environment does not import; see the messages above"; exit 1; }
# DeepSpeed for `--deepspeed` (tests/test_deepspeed.py trains ZeRO-2 on the CPU): PyPI ships only its source,
# which builds a pure-Python wheel with DS_BUILD_OPS=0 against the torch installed above (under a minute);
# its dependencies are pinned in the same file (requirements/gpu-deepspeed.txt says why 0.18.9).
echo "[install] 3b/4 DeepSpeed, built from source without ops (requirements/gpu-deepspeed.txt)"
DS_BUILD_OPS=0 pipq install --no-deps --no-build-isolation "$(grep -o '^deepspeed==[^ ]*' requirements/gpu-deepspeed.txt)"
pipq install --no-deps -r <(grep -v '^deepspeed==' requirements/gpu-deepspeed.txt)
"$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1 \
    || { echo "[install] deepspeed does not import; see the messages above"; exit 1; }
echo "[install] 4/4 the helpers package (editable)"
pipq install --no-deps -e .
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (book)" >/dev/null
echo "$HASH" > "$STAMP"
echo "[install] done in $(( $(date +%s) - start )) s: $("$VENV/bin/python" -c 'import torch,transformers,xtuner,bitsandbytes as b; print(f"torch {torch.__version__}, transformers {transformers.__version__}, xtuner {xtuner.__version__}, bitsandbytes {b.__version__}")')"
