"""The pins have one source of truth and the installed environment matches it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, version = line.split("==")
            out[pkg.lower().replace("_", "-")] = version
    return out


def test_environment_yml_is_generated_from_the_pins():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_env.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_lock_agrees_with_the_pins():
    lock = _pins("lock-cpu.txt")
    for pkg, version in {**_pins("base.txt"), **_pins("no-deps.txt")}.items():
        assert lock.get(pkg) == version, f"{pkg}: pinned {version}, locked {lock.get(pkg)}"


def test_installed_versions_match_the_pins():
    wrong = {}
    for pkg, version in {**_pins("base.txt"), **_pins("no-deps.txt")}.items():
        try:
            got = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            got = None
        if got is None or got.split("+")[0] != version:
            wrong[pkg] = (version, got)
    assert not wrong, f"installed versions differ from requirements/*.txt: {wrong}; run tools/install.sh"


def test_the_gpu_training_wheels_have_the_cpu_environments_versions():
    """requirements/gpu-train.txt (carried to the lent GPUs) pins what the CPU lock pins, with one stated exception."""
    lock, gpu = _pins("lock-cpu.txt"), _pins("gpu-train.txt")
    exceptions = {"datasets", "dill", "multiprocess"}  # Python 3.12 wheels on the GPU machine
    assert {"transformers", "peft", "xtuner", "mmengine", "bitsandbytes"} <= set(gpu)
    wrong = {k: (v, lock[k]) for k, v in gpu.items() if k in lock and k not in exceptions and lock[k] != v}
    assert not wrong, wrong
