"""Shared fixtures: one tiny InternVL2 built per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly built tiny InternVL2 checkpoint directory (seed 0)."""
    from helpers import tiny

    return tiny.build("tiny", tmp_path_factory.mktemp("models") / "tiny-internvl2", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) loaded through the public AutoModel/AutoTokenizer path, float32, eval mode."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="session")
def executed_book(tmp_path_factory) -> Path:
    """Run every notebook once on the tiny profile through the runner (shared by the notebook and site tests).

    Returns the folder holding ``notebooks/`` (executed copies, ``run-summary.json``) and ``outputs/``.
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("book")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.book",
            "run",
            "--profile",
            "tiny",
            "--build-dir",
            str(tmp / "notebooks"),
            "-p",
            "output_dir",
            str(tmp / "outputs"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, f"the runner failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return tmp


def short_recipe(model_dir: Path, data_file: Path, image_folder: Path, **kw):
    """A CPU-sized QLoRA recipe on the tiny model for the training tests (batch 2, LoRA r=8, a log line per step)."""
    from helpers import config

    r = config.Recipe(
        str(model_dir),
        str(data_file),
        str(image_folder) + "/",
        max_length=2048,
        batch_size=2,
        accumulative_counts=1,
        lora_r=8,
        lora_alpha=16,
        lr=5e-3,
        log_interval=1,
        **kw,
    )
    return config.fit_to_hardware(r, cuda=False, bnb_4bit=True)[0]
