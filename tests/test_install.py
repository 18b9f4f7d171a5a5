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


def test_the_gpu_notebook_wheels_have_the_cpu_environments_versions():
    """requirements/gpu-notebooks.txt (papermill and the kernel, carried to the lent GPUs) pins the lock's versions."""
    lock, gpu = _pins("lock-cpu.txt"), _pins("gpu-notebooks.txt")
    assert {"papermill", "ipykernel", "nbclient", "jupyter-client"} <= set(gpu)
    missing = sorted(set(gpu) - set(lock))
    wrong = {k: (v, lock[k]) for k, v in gpu.items() if k in lock and lock[k] != v}
    assert not missing and not wrong, (missing, wrong)


def test_the_serving_environment_shares_the_training_environments_versions_where_it_can():
    """requirements/serve.txt (`make gpu-env`'s .venv-serve): LMDeploy with its own transformers and torch,
    everything else the notebooks need at the training environment's versions."""
    base, serve = _pins("base.txt"), _pins("serve.txt")
    assert serve["lmdeploy"] == "0.18.0"
    own = {"lmdeploy", "torch", "torchvision", "transformers"}  # LMDeploy's caps: transformers>=4.56, torch<=2.12.1
    assert int(serve["transformers"].split(".")[0]) >= 5 and tuple(map(int, serve["torch"].split("."))) <= (2, 12, 1)
    wrong = {k: (v, base.get(k)) for k, v in serve.items() if k not in own and base.get(k) != v}
    assert not wrong, wrong


def test_deepspeed_is_installed_at_its_pin_and_gpu_env_registers_the_serving_kernel():
    """tools/install.sh builds the pinned DeepSpeed into the book's environment; `make gpu-env`
    (tools/install.sh --gpu) adds the LMDeploy environment and registers its kernel for the runner."""
    from helpers import book

    assert metadata.version("deepspeed") == _pins("deepspeed.txt")["deepspeed"] == "0.18.9"
    make = (ROOT / "Makefile").read_text()
    assert "gpu-env:" in make and "tools/install.sh --gpu" in make
    script = (ROOT / "tools" / "install.sh").read_text()
    assert "-r requirements/serve.txt" in script and f"--name {book.SERVING_KERNEL}" in script
