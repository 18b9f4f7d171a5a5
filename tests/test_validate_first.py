"""Nothing reaches XTuner that it would crash on or silently replace; no training process outlives its run.

A broken dataset stops ``config.write`` and ``helpers.train.train`` with the
validator's report before any model is loaded; XTuner's ``Error:`` lines (a
sample it replaced by a random other one) fail the run; killing the process
that called ``train`` ends every process of the training.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import SAMPLE_DATA_DIR, config, train
from helpers.errors import DatasetError, RunError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A copy of the sample folder (so it can be broken)."""
    return Path(shutil.copytree(SAMPLE_DATA_DIR, tmp_path / "clot"))


def _recipe(model_dir: Path, data: Path, **kw) -> config.Recipe:
    r = config.Recipe(str(model_dir), str(data / "ex_cn.json"), str(data) + "/", max_length=2048, batch_size=2,
                      accumulative_counts=1, lora_r=8, lora_alpha=16, lr=5e-3, log_interval=1, **kw)
    return config.fit_to_hardware(r, cuda=False, bnb_4bit=True)[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model or starts a training process."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or a training process started before the dataset check")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(train.subprocess, "Popen", refuse)


def _truncate(data: Path) -> int:
    """Cut ex_cn.json after its 30th line; return that line number."""
    path = data / "ex_cn.json"
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:30]) + b"\n")
    return 30


def _delete_an_image(data: Path) -> str:
    gone = sorted((data / "ex_images").iterdir())[3]
    gone.unlink()
    return f"ex_images/{gone.name}"


@pytest.mark.parametrize("breakage", ["truncated", "missing_image"])
def test_a_broken_dataset_stops_config_write_before_anything(tiny_model_dir, dataset, tmp_path, no_model_load,
                                                             breakage):
    what = _truncate(dataset) if breakage == "truncated" else _delete_an_image(dataset)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        config.write(_recipe(tiny_model_dir, dataset, max_iters=2), tmp_path / "cfg" / "cfg.py")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    if breakage == "truncated":
        assert f"ex_cn.json ends early at line {what} (the file is probably truncated" in message
        assert "[truncated]" in message and "malformed_json" not in message
    else:
        assert f"[image_not_found]: {what} does not exist" in message
    assert not (tmp_path / "cfg").exists(), "nothing written"


@pytest.mark.parametrize("breakage", ["truncated", "missing_image"])
def test_a_broken_dataset_stops_train_before_anything(tiny_model_dir, dataset, tmp_path, no_model_load, breakage):
    cfg = config.write(_recipe(tiny_model_dir, dataset, max_iters=2), tmp_path / "cfg.py")
    assert cfg.dataset_report.ok and cfg.dataset_report.records == 40
    what = _truncate(dataset) if breakage == "truncated" else _delete_an_image(dataset)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        train.train(cfg, tmp_path / "work", progress=False)
    assert time.perf_counter() - start < 10
    if breakage == "truncated":
        assert f"ends early at line {what} (the file is probably truncated: was it copied completely?)" \
            in str(err.value)
    else:
        assert f"{what} does not exist" in str(err.value)
    assert not (tmp_path / "work" / "train.log").exists(), "XTuner was not started"


def test_warnings_are_returned_not_raised(tiny_model_dir, dataset, tmp_path):
    cfg = config.write(_recipe(tiny_model_dir, dataset, max_iters=2).changed(max_length=300), tmp_path / "cfg.py")
    report = cfg.dataset_report
    assert report.errors == [] and report.warnings and {p.kind for p in report.warnings} == {"too_long"}


def test_dataset_settings_are_read_without_importing_xtuner(tiny_model_dir, dataset, tmp_path):
    cfg = config.write(_recipe(tiny_model_dir, dataset), tmp_path / "cfg.py")
    assert train.dataset_settings(cfg) == {"data_paths": str(dataset / "ex_cn.json"),
                                           "image_folders": str(dataset) + "/",
                                           "model_path": str(tiny_model_dir), "max_length": 2048}


def test_xtuner_error_lines_fail_the_run_naming_the_records(dataset, tmp_path):
    log = tmp_path / "train.log"
    gone = dataset / "ex_images" / "astronaut.jpg"
    old = "Error: [Errno 2] No such file or directory: '/elsewhere/old.jpg'\n"  # an earlier run's line
    log.write_text(old + "$ python -m helpers.xtuner_launch cfg.py\n"
                   "12/02 10:00:01 - mmengine - INFO - Iter(train) [ 1/8]  lr: 1e-3  loss: 6.1\n"
                   f"Error: [Errno 2] No such file or directory: '{gone}'\n"
                   f"12/02 10:00:02 - mmengine - INFO - Error: [Errno 2] No such file or directory: '{gone}'\n"
                   "Error: image file is truncated (3 bytes not processed)\n")
    settings = {"data_paths": str(dataset / "ex_cn.json"), "image_folders": str(dataset) + "/"}
    with pytest.raises(RunError) as err:
        train.check_train_log(log, since=len(old), settings=settings)
    message = str(err.value)
    assert "could not read 2 sample(s)" in message and "silently trained on random other samples" in message
    assert f"- Error: [Errno 2] No such file or directory: '{gone}' (used by ex_cn.json:2 record 0)" in message
    assert "- Error: image file is truncated (3 bytes not processed)" in message
    assert "old.jpg" not in message
    log.write_text(old)
    train.check_train_log(log, since=len(old), settings=settings)  # nothing in this run: no error
