"""helpers.params: every notebook parameter has a rule, the defaults follow it, bad values stop the runner."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_DIR, book, params


def _notebook_defaults() -> dict[str, dict[str, object]]:
    """Each notebook's parameters cell, as the values it assigns."""
    return {nb.stem: book.parameter_defaults(nb) for nb in book.discover()}


def test_every_notebook_parameter_has_a_rule():
    names = {name for values in _notebook_defaults().values() for name in values}
    assert names - params.rule_names() == set(), "add a rule to helpers.params for each new parameter"


@pytest.mark.parametrize("notebook", sorted(_notebook_defaults()))
def test_the_notebooks_defaults_follow_the_rules(notebook):
    values = book.resolve_params(_notebook_defaults()[notebook])
    assert params.check(values, cuda=False) == []


def test_the_profiles_follow_the_rules():
    tiny = book.resolve_params(book.load_params(REPO_DIR / "params" / "tiny.yaml"))
    assert params.check(tiny, cuda=False) == []
    for path in sorted((REPO_DIR / "params").glob("*.yaml")):
        values = book.load_params(path)
        if "runs" in values:  # a sweep file: each run's values over the base
            sets = [{**values.get("base", {}), **run} for run in values["runs"]]
        else:
            sets = [values]
        for v in sets:
            found = [
                p
                for p in params.check(v, cuda=True)
                if p.name not in ("data_path", "model_path", "runs_dir", "checkpoint")
            ]  # paths of another machine
            assert found == [], f"{path.name}: {[str(p) for p in found]}"


def test_every_problem_is_named_with_rule_and_fix():
    found = params.check(
        {
            "lora_r": -5,
            "lr": "fast",
            "batch_size": 0,
            "device": "gpu",
            "fresh": "yes",
            "data_path": "/nonexistent/CLoT",
        },
        cuda=False,
    )
    text = {p.name: str(p) for p in found}
    assert set(text) == {"lora_r", "lr", "batch_size", "device", "fresh", "data_path"}
    assert text["lora_r"] == (
        "lora_r=-5: the LoRA rank must be a positive integer, e.g. 8, 64 or 128. Fix: -p lora_r 128"
    )
    assert "must be int or float, not str" in text["lr"] and "Fix: -p lr" in text["lr"]
    assert "must be true or false" in text["fresh"]


def test_gpu_only_values_on_a_cpu_machine():
    found = params.check({"device": "cuda", "backend": "lmdeploy"}, cuda=False)
    assert [p.name for p in found] == ["device", "backend"]
    assert all("needs a CUDA GPU" in str(p) for p in found)
    assert params.check({"device": "cuda", "backend": "lmdeploy"}, cuda=True) == []


def test_bad_values_stop_the_runner_before_any_notebook(tmp_path: Path):
    """As a user would run it: exit 2, every problem on stderr, nothing executed."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.book",
            "run",
            "-p",
            "lora_r",
            "-5",
            "-p",
            "lr",
            "0",
            "--build-dir",
            str(tmp_path / "nb"),
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "lora_r=-5: the LoRA rank must be a positive integer" in proc.stderr
    assert "lr=0: the learning rate must be positive" in proc.stderr
    assert "no notebook was run" in proc.stderr and not (tmp_path / "nb").exists()
    print(f"stopped in {seconds:.1f} s")


def test_a_missing_params_file_lists_the_ones_there(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.book",
            "run",
            "--params-file",
            "params/nope.yaml",
            "--build-dir",
            str(tmp_path / "nb"),
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "params/nope.yaml does not exist" in proc.stderr and "tiny.yaml" in proc.stderr
