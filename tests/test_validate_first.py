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
from conftest import short_recipe

from helpers import SAMPLE_DATA_DIR, config, data, train
from helpers.errors import DatasetError, RunError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A copy of the sample folder (so it can be broken)."""
    return Path(shutil.copytree(SAMPLE_DATA_DIR, tmp_path / "clot"))


def _recipe(model_dir: Path, data: Path, **kw) -> config.Recipe:
    return short_recipe(model_dir, data / "ex_cn.json", data, **kw)


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
def test_a_broken_dataset_stops_config_write_before_anything(
    tiny_model_dir, dataset, tmp_path, no_model_load, breakage
):
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
    assert cfg.dataset_report.ok and cfg.dataset_report.records == len(data.load_sample())
    what = _truncate(dataset) if breakage == "truncated" else _delete_an_image(dataset)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        train.train(cfg, tmp_path / "work", progress=False)
    assert time.perf_counter() - start < 10
    if breakage == "truncated":
        assert f"ends early at line {what} (the file is probably truncated: was it copied completely?)" in str(
            err.value
        )
    else:
        assert f"{what} does not exist" in str(err.value)
    assert not (tmp_path / "work" / "train.log").exists(), "XTuner was not started"


def test_warnings_are_returned_not_raised(tiny_model_dir, dataset, tmp_path):
    cfg = config.write(_recipe(tiny_model_dir, dataset, max_iters=2).changed(max_length=300), tmp_path / "cfg.py")
    report = cfg.dataset_report
    assert report.errors == [] and report.warnings and {p.kind for p in report.warnings} == {"too_long"}


def test_dataset_settings_are_read_without_importing_xtuner(tiny_model_dir, dataset, tmp_path):
    cfg = config.write(_recipe(tiny_model_dir, dataset), tmp_path / "cfg.py")
    assert train.dataset_settings(cfg) == {
        "data_paths": str(dataset / "ex_cn.json"),
        "image_folders": str(dataset) + "/",
        "model_path": str(tiny_model_dir),
        "max_length": 2048,
    }


def test_xtuner_error_lines_fail_the_run_naming_the_records(dataset, tmp_path):
    log = tmp_path / "train.log"
    gone = dataset / "ex_images" / "astronaut.jpg"
    old = "Error: [Errno 2] No such file or directory: '/elsewhere/old.jpg'\n"  # an earlier run's line
    log.write_text(
        old + "$ python -m helpers.xtuner_launch cfg.py\n"
        "12/02 10:00:01 - mmengine - INFO - Iter(train) [ 1/8]  lr: 1e-3  loss: 6.1\n"
        f"Error: [Errno 2] No such file or directory: '{gone}'\n"
        f"12/02 10:00:02 - mmengine - INFO - Error: [Errno 2] No such file or directory: '{gone}'\n"
        "Error: image file is truncated (3 bytes not processed)\n"
    )
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


def _processes_of(work: Path) -> list[tuple[int, str]]:
    """Live processes whose command line mentions ``work`` (the watchdog, XTuner, its dataloader workers)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(work) in cmdline and state != "Z":
            found.append((int(entry.name), cmdline[:200]))
    return found


def _wait_for(predicate, seconds: float, step: float = 0.2) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_no_training_process_outlives_its_caller(tiny_model_dir, tmp_path, sig):
    """Kill (or interrupt) the process that called train.train mid-run: within 5 s nothing of the run is left."""
    cfg = config.write(
        _recipe(tiny_model_dir, SAMPLE_DATA_DIR, max_iters=500, save_steps=1000).changed(
            data_path=str(SAMPLE_DATA_DIR / "train.json")
        ),
        tmp_path / "cfg.py",
    )
    work = tmp_path / "work"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})  # this checkout's helpers, not an installed copy
        from helpers import train
        train.train({str(cfg)!r}, {str(work)!r}, progress=False)
    """)
    )
    caller = subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        log = work / "train.log"
        started = _wait_for(lambda: log.exists() and "Iter(train)" in log.read_text(errors="replace"), 240, 0.5)
        assert started, log.read_text()[-3000:] if log.exists() else "no train.log"
        running = _processes_of(work)
        # the watchdog, XTuner and, with dataloader_num_workers=1 on this profile, a dataloader worker
        assert len(running) >= 3 and any("helpers.procgroup" in cmd for _, cmd in running), running
        caller.send_signal(sig)
        caller.wait(timeout=30)
        gone = _wait_for(lambda: not _processes_of(work), 5)
        assert gone, f"still running 5 s after the caller got {sig.name}: {_processes_of(work)}"
    finally:
        caller.kill()
        for pid, _ in _processes_of(work):
            os.kill(pid, signal.SIGKILL)


def test_a_sample_xtuner_could_not_read_fails_the_run(tiny_model_dir, dataset, tmp_path):
    """An image removed after the check: XTuner prints Error and substitutes; the run must not pass as OK."""
    cfg = config.write(
        _recipe(tiny_model_dir, dataset, max_iters=2).changed(data_path=str(dataset / "eval.json"), batch_size=4),
        tmp_path / "cfg.py",
    )
    gone = sorted((dataset / "ex_images").glob("*"))
    used = [line for line in (dataset / "eval.json").read_text().splitlines() if '"image"' in line]
    for path in gone:
        if any(path.name in line for line in used):
            path.unlink()
            break
    with pytest.raises(RunError) as err:
        train.train(cfg, tmp_path / "work", progress=False, check_data=False)
    message = str(err.value)
    assert f"No such file or directory: '{dataset}/ex_images/{path.name}'" in message
    assert "(used by eval.json:" in message and "silently trained on random other samples" in message
