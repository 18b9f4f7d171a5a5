"""Run XTuner training as a subprocess, with a live progress bar, checkpoints and resume.

:func:`train` starts XTuner's own training tool (``xtuner.tools.train``, the
code behind ``xtuner train``) through :mod:`helpers.xtuner_launch` in a
child process, reads its log lines as they come (``Iter(train) [ 12/48]
lr: ... loss: ...``) into a tqdm bar showing step, loss, learning rate and
ETA, keeps the whole log in ``work_dir/train.log``, and returns the
checkpoints it left. With more than one GPU it starts ``torchrun``; with
``deepspeed`` it passes XTuner's ``--deepspeed`` option.

An interrupted run resumes from its last checkpoint: ``train(..., resume="auto")``
(the default) finds it through mmengine's ``last_checkpoint`` file and checks
it can be read before starting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import REPO_DIR
from .errors import BookError

ITER_RE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\]")
FIELD_RE = re.compile(r"\b(lr|loss|eta|grad_norm|data_time|time|memory):\s*(\S+)")


@dataclass
class TrainResult:
    """What a training run left behind."""

    work_dir: Path
    returncode: int
    seconds: float
    steps: int
    total_steps: int | None
    last_loss: float | None
    checkpoints: list[Path] = field(default_factory=list)
    log: Path | None = None
    resumed_from: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def parse_log_line(line: str) -> dict[str, Any] | None:
    """The step and metrics of one mmengine training log line, or None.

    >>> parse_log_line("... Iter(train) [ 12/48]  lr: 1.8e-03  eta: 0:00:59  time: 1.84  loss: 6.4795")
    {'step': 12, 'total': 48, 'lr': 0.0018, 'eta': '0:00:59', 'time': 1.84, 'loss': 6.4795}
    """
    m = ITER_RE.search(line)
    if not m:
        return None
    out: dict[str, Any] = {"step": int(m.group(1)), "total": int(m.group(2))}
    for key, value in FIELD_RE.findall(line[m.end():]):
        try:
            out[key] = value if key == "eta" else float(value)
        except ValueError:
            out[key] = value
    return out


def list_checkpoints(work_dir: str | Path) -> list[Path]:
    """``iter_N.pth`` checkpoints in ``work_dir`` (files, or folders with DeepSpeed), by step.

    >>> list_checkpoints("/nonexistent")
    []
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [p for p in work_dir.glob("iter_*.pth") if re.fullmatch(r"iter_\d+\.pth", p.name)]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def check_checkpoint(path: str | Path) -> Path:
    """Return ``path`` if it looks like a complete checkpoint; raise a BookError that says what to do.

    A file must be a readable torch zip archive (a run killed while writing
    leaves a truncated one); a DeepSpeed folder must hold its model states.
    """
    path = Path(path)
    others = [p.name for p in list_checkpoints(path.parent) if p != path]
    hint = (f" Delete it and resume from an earlier one ({', '.join(others)}), or start afresh with "
            "resume=False." if others else " Delete it and start afresh with resume=False.")
    if not path.exists():
        raise BookError(f"checkpoint {path} does not exist.{hint}")
    if path.is_dir():
        if not any(path.rglob("*model_states.pt")):
            raise BookError(f"checkpoint folder {path} has no DeepSpeed model states; it is incomplete.{hint}")
        return path
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise BookError(f"checkpoint {path} is corrupt (bad member {bad}).{hint}")
    except zipfile.BadZipFile as exc:
        raise BookError(f"checkpoint {path} cannot be read ({exc}); it was probably cut off while "
                        f"being written.{hint}") from exc
    return path


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: mmengine's ``last_checkpoint`` record, or the newest ``iter_N.pth``.

    mmengine deletes old checkpoints (``max_keep_ckpts``) before it rewrites
    ``last_checkpoint``, so a run killed in between leaves a record pointing
    at a deleted file; then the newest checkpoint on disk is the right one.
    """
    work_dir = Path(work_dir)
    found = list_checkpoints(work_dir)
    marker = work_dir / "last_checkpoint"
    if marker.exists():
        recorded = Path(marker.read_text().strip())
        recorded = recorded if recorded.is_absolute() else work_dir / recorded
        newest = found[-1] if found else None
        if recorded.exists() and (newest is None or _step(recorded) >= _step(newest)):
            return recorded
        return newest or recorded
    return found[-1] if found else None


def _step(path: Path) -> int:
    m = re.search(r"iter_(\d+)", path.name)
    return int(m.group(1)) if m else -1


def command(config: str | Path, work_dir: str | Path, *, gpus: int = 0, deepspeed: str | None = None,
            resume_from: str | Path | None = None) -> list[str]:
    """The command line :func:`train` runs (also useful to copy into a terminal).

    >>> command("cfg.py", "work", gpus=2)[:5]   # doctest: +ELLIPSIS
    ['...', '-m', 'torch.distributed.run', '--nproc_per_node', '2']
    """
    args = [str(config), "--work-dir", str(work_dir)]
    if deepspeed:
        args += ["--deepspeed", deepspeed]
    if resume_from:
        args += ["--resume", str(resume_from)]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
                "--master_port", str(29500 + os.getpid() % 1000), "-m", "helpers.xtuner_launch", *args,
                "--launcher", "pytorch"]
    return [sys.executable, "-m", "helpers.xtuner_launch", *args]


def _stream(proc: subprocess.Popen) -> Iterator[str]:
    assert proc.stdout is not None
    for raw in proc.stdout:
        yield raw.rstrip("\n")


def train(config: str | Path, work_dir: str | Path, *, resume: bool | str | Path = "auto", gpus: int = 0,
          deepspeed: str | None = None, progress: bool = True, stop_after_steps: int | None = None,
          env: dict[str, str] | None = None) -> TrainResult:
    """Train with XTuner; return a :class:`TrainResult`. Raises BookError when the run fails.

    ``resume``: ``"auto"`` continues from the last checkpoint in ``work_dir``
    when there is one; a path resumes from that checkpoint; ``False`` starts
    afresh (it refuses to mix into a ``work_dir`` that already has checkpoints).
    ``stop_after_steps`` kills the run after that step is logged: the book
    uses it to demonstrate resuming an interrupted run.
    """
    config, work_dir = Path(config), Path(work_dir)
    if not config.exists():
        raise BookError(f"config {config} does not exist; write one with helpers.config.write(recipe, path)")
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from: Path | None = None
    if resume == "auto":
        found = last_checkpoint(work_dir)
        resume_from = check_checkpoint(found) if found is not None else None
    elif resume:
        resume_from = check_checkpoint(resume)  # type: ignore[arg-type]
    elif list_checkpoints(work_dir):
        raise BookError(f"{work_dir} already holds checkpoints {[p.name for p in list_checkpoints(work_dir)]}; "
                        "resume=False would mix two runs there. Use another work_dir, delete them, or resume.")

    cmd = command(config, work_dir, gpus=gpus, deepspeed=deepspeed, resume_from=resume_from)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), child_env.get("PYTHONPATH")]))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = work_dir / "train.log"
    bar = None
    steps, total, last_loss = 0, None, None
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env, cwd=work_dir, start_new_session=True)
        tail: list[str] = []
        try:
            for line in _stream(proc):
                log.write(line + "\n")
                tail = (tail + [line])[-40:]
                info = parse_log_line(line)
                if info is None:
                    continue
                steps, total = info["step"], info["total"]
                last_loss = info.get("loss", last_loss)
                if progress:
                    if bar is None:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=total, initial=0, desc="training", unit="step")
                    bar.n = steps
                    bar.set_postfix(loss=f"{last_loss:.4f}" if last_loss is not None else "-",
                                    lr=f"{info.get('lr', float('nan')):.2e}", eta=info.get("eta", "?"))
                    bar.refresh()
                if stop_after_steps is not None and steps >= stop_after_steps:
                    os.killpg(proc.pid, signal.SIGKILL)  # an abrupt stop, like a crash or a lost machine
                    break
        finally:
            returncode = proc.wait()
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - start
    result = TrainResult(work_dir, returncode, seconds, steps, total, last_loss, list_checkpoints(work_dir),
                         log_path, resume_from)
    if returncode != 0 and stop_after_steps is None:
        raise BookError(f"XTuner training failed (exit code {returncode}); last lines of {log_path}:\n"
                        + "\n".join(tail[-25:]))
    return result


def read_scalars(work_dir: str | Path) -> list[dict[str, Any]]:
    """All logged scalars of a run (``vis_data/scalars.json`` of every start, resumes included), by step.

    When a resumed run logs a step again, the later value wins.
    """
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if "loss" in row:
                    rows[int(row["step"])] = row
    return [rows[k] for k in sorted(rows)]
