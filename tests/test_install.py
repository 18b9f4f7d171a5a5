"""The pins have one source of truth and the installed environment matches it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from helpers import env

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    return env.read_pins(ROOT / "requirements" / name)


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


def _fake_venv(root: Path, packages: dict[str, str]) -> Path:
    """A folder shaped like a venv, with one small installed distribution per ``packages`` entry."""
    site = root / "lib" / "python3.11" / "site-packages"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    site.mkdir(parents=True)
    for name, version in packages.items():
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
        (root / "bin" / f"{name}run").write_text(f"#!{root}/bin/python\nimport {name}\n")
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(
            f"{name}/__init__.py,,\n../../../bin/{name}run,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n"
        )
    return root


def test_share_packages_links_only_the_pinned_heavy_packages(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import share_packages
    finally:
        sys.path.remove(str(ROOT / "tools"))
    source = _fake_venv(tmp_path / "a", {"torch": "2.14.1", "triton": "3.8.0", "numpy": "1.26.4"})
    target = _fake_venv(tmp_path / "b", {})
    lock = tmp_path / "lock.txt"
    lock.write_text("torch==2.14.1\ntriton==3.7.0  # another version: not shared\nnumpy==1.26.4\n")
    assert share_packages.main([str(source), str(target), str(lock)]) == 0
    site_a, site_b = (v / "lib" / "python3.11" / "site-packages" for v in (source, target))
    assert (site_b / "torch" / "__init__.py").stat().st_ino == (site_a / "torch" / "__init__.py").stat().st_ino
    assert (site_b / "torch-2.14.1.dist-info" / "RECORD").is_file()
    assert not (site_b / "triton").exists() and not (site_b / "numpy").exists()  # wrong version / not heavy
    script = (target / "bin" / "torchrun").read_text()
    assert script.startswith(f"#!{target.resolve()}/bin/python\n") and "import torch" in script
    assert share_packages.main([str(tmp_path / "nowhere"), str(target), str(lock)]) == 0  # no source venv yet


def test_the_install_scripts_stop_on_a_full_disk_and_keep_pips_errors(tmp_path):
    """tools/common.sh: need_disk names the free and the needed space; pipq drops only pip's "Location" noise."""
    common = ROOT / "tools" / "common.sh"
    full = subprocess.run(
        ["bash", "-c", f"source {common}; need_disk install .venv 100000000 'a reason'; echo went-on"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert full.returncode == 1 and "went-on" not in full.stdout
    assert "GB free on the disk of" in full.stdout and "needs about 100000000 GB (a reason)" in full.stdout
    fake = tmp_path / "python"
    lines = ["#!/bin/sh", "echo 'WARNING: Location file:///x is ignored'", "echo 'ERROR: no matching distribution'"]
    fake.write_text("\n".join([*lines, "exit 3", ""]))
    fake.chmod(0o755)
    pip = subprocess.run(["bash", "-c", f"source {common}; pipq {fake} install x"], capture_output=True, text=True)
    assert pip.returncode == 3 and pip.stdout == "ERROR: no matching distribution\n"


def test_the_install_page_quotes_the_pins():
    """book/reference/install.md's "Why these versions" table names the requirement files' versions."""
    import re

    pins = env.book_pins()
    text = (ROOT / "book" / "reference" / "install.md").read_text(encoding="utf-8")
    table = text.split("## Why these versions", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert len(rows) >= 8
    for cells in rows:
        names = cells[0].split(" / ")
        versions = re.findall(r"\d+\.\d+[\w.]*", cells[1])[: len(names)]
        assert [pins.get(n) for n in names] == versions, cells[:2]
