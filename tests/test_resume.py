"""Nothing lost: the runner, killed during training and run again, resumes; no training process outlives it.

Run as a learner runs the book (``python -m helpers.book run``), on the tiny model
with a short run: kill the runner (SIGKILL) after a checkpoint, check that XTuner
died with it, run the same command again and check that it resumed from the
checkpoint and finished; a third run finds the finished run and trains nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO_DIR, train

pytestmark = pytest.mark.notebooks


def _command(out: Path, build: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "helpers.book",
        "run",
        "--only",
        "03,04",
        "--build-dir",
        str(build),
        "-p",
        "output_dir",
        str(out),
        "-p",
        "max_steps",
        "48",
        "-p",
        "save_steps",
        "8",
        "-p",
        "log_interval",
        "2",
        "-p",
        "demo_interrupt",
        "false",
    ]


def _training_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (the run's work dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "pytest" not in cmd:
            found.append(f"{proc.name}: {cmd[:160]}")
    return found


def _notebook_text(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def test_killed_runner_leaves_no_orphan_and_the_rerun_resumes(tmp_path: Path):
    out, work = tmp_path / "outputs", tmp_path / "outputs" / "qlora" / "work"
    runner = subprocess.Popen(
        _command(out, tmp_path / "nb1"),
        cwd=REPO_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline:  # a checkpoint on disk and a few iterations after it
            ckpts = train.list_checkpoints(work)
            if ckpts and (work / "train.log").exists():
                logged = [
                    info["step"]
                    for line in (work / "train.log").read_text(errors="replace").splitlines()
                    if (info := train.parse_log_line(line))
                ]
                if logged and max(logged) >= train._step(ckpts[-1]) + 4:
                    break
            assert runner.poll() is None, "the runner ended before it could be interrupted"
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 10 minutes")
    finally:
        runner.send_signal(signal.SIGKILL)  # as a closed terminal or an OOM killer would
        runner.wait()
    deadline = time.time() + 15
    while _training_processes(str(work)) and time.time() < deadline:
        time.sleep(0.5)
    assert _training_processes(str(work)) == [], "training processes outlived the killed runner"
    # read what the run left only now that every process of it is gone: until the trainer has died
    # it may log a few more iterations, or save another checkpoint, after the runner was killed
    killed_at = max(
        train.parse_log_line(line)["step"]
        for line in (work / "train.log").read_text().splitlines()
        if train.parse_log_line(line)
    )
    ckpt = train.last_checkpoint(work)

    again = subprocess.run(_command(out, tmp_path / "nb2"), cwd=REPO_DIR, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    said = _notebook_text(tmp_path / "nb2" / "04_qlora_training.ipynb")
    step = train._step(ckpt)
    assert f"resuming the interrupted run in {work} from {ckpt.name}" in said
    if killed_at > step:  # the usual case; a kill that lands just after a save repeats nothing
        assert f"iterations {step + 1}-{killed_at} will run again" in said
    else:
        assert "no iteration is repeated" in said
    record = train.read_run_record(work)
    assert record["finished"] and record["steps"] == record["total_steps"] == 48
    assert [r["step"] for r in train.read_scalars(work)] == list(range(2, 49, 2))  # one continuous curve

    third = subprocess.run(_command(out, tmp_path / "nb3"), cwd=REPO_DIR, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already holds a finished run of this config" in _notebook_text(tmp_path / "nb3" / "04_qlora_training.ipynb")
    assert len(list(work.glob("2*/vis_data"))) == 2, "the third run must not train"


def test_plan_run_moves_a_changed_or_fresh_run_aside(tmp_path: Path):
    config, work = tmp_path / "config.py", tmp_path / "work"
    config.write_text("a = 1\n")
    work.mkdir()
    (work / "train.log").write_text("Iter(train) [ 4/8]  loss: 1.0\n")
    (work / train.RUN_RECORD).write_text(json.dumps({"config_sha256": train.config_hash(config)}))
    assert train.plan_run(config, work).message.startswith(f"the earlier run in {work} left no checkpoint")
    config.write_text("a = 2\n")  # another config: the old run is kept, the new one starts in work/
    plan = train.plan_run(config, work)
    assert plan.action == "start" and plan.kept is not None and (plan.kept / "train.log").exists()
    assert "its config differs" in plan.message and not work.exists()
    work.mkdir()
    (work / "x").write_text("")
    plan = train.plan_run(config, work, fresh=True)
    assert plan.kept.name.startswith("work.old-") and plan.kept != tmp_path / "work" and "fresh=True" in plan.message
