#!/usr/bin/env bash
# Create (or update) ms-swift's environment for notebook 12 (requirements/swift.txt says why it is separate).
#   bash tools/install-swift.sh [VENV_DIR]      default: .venv-swift
# Safe to re-run: it does nothing when the requirements have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-swift}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed"
HASH="$(cat requirements/swift.txt requirements/lock-swift.txt | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    echo "[install-swift] $VENV is up to date"
    exit 0
fi
start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
source tools/common.sh  # pipq (quiet pip) and need_disk, shared with tools/install.sh
# torch's CUDA build is 5.3 GB; .venv pins the same one: link its files instead of copying them
[[ -x "${BOOK_VENV:-.venv}/bin/python" ]] && "$VENV/bin/python" tools/share_packages.py "${BOOK_VENV:-.venv}" "$VENV" requirements/lock-swift.txt
need_gb=8
ls -d "$VENV"/lib/python3.*/site-packages/torch >/dev/null 2>&1 && need_gb=3
need_disk install-swift "$VENV" "$need_gb"
echo "[install-swift] 1/2 torch + torchvision"
pipq "$VENV/bin/python" install -c requirements/lock-swift.txt torch torchvision
echo "[install-swift] 2/2 ms-swift and its dependencies: the locked set, without pip's resolver"
# --no-deps: modelscope 1.24.0's [datasets] extra pins setuptools==69.5.1 while torch 2.14.1 asks for
# setuptools>=77, so pip's resolver refuses any set with both; the lock is a set that imports and runs
# notebook 12 (tests/test_swift.py checks it agrees with requirements/swift.txt).
pipq "$VENV/bin/python" install --no-deps -r requirements/lock-swift.txt
"$VENV/bin/python" -c "import swift.llm" || { echo "[install-swift] ms-swift does not import; see above"; exit 1; }
echo "$HASH" > "$STAMP"
echo "[install-swift] done in $(( $(date +%s) - start )) s: $("$VENV/bin/python" -c 'import swift, transformers, peft, numpy; print(f"ms-swift {swift.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, numpy {numpy.__version__}")')"
