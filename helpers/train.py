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

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_DIR
from .errors import BookError, RunError, UsageError

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
    dataset_report: Any = None  # helpers.data.ValidationReport of the check before the run (warnings only)

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
    for key, value in FIELD_RE.findall(line[m.end() :]):
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
    hint = (
        f" Delete it and resume from an earlier one ({', '.join(others)}), or start afresh with resume=False."
        if others
        else " Delete it and start afresh with resume=False."
    )
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
        raise BookError(
            f"checkpoint {path} cannot be read ({exc}); it was probably cut off while being written.{hint}"
        ) from exc
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


class _Unknown:
    """Stands for a name or call the config reader does not evaluate (a class, a function)."""


def _literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """Evaluate a config expression made of literals, known names, ``dict(...)``, lists and tuples."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names.get(node.id, _Unknown())
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {kw.arg: _literal(kw.value, names) for kw in node.keywords if kw.arg}
    return _Unknown()


def dataset_settings(config: str | Path) -> dict[str, Any]:
    """The data XTuner will read for a config: ``data_paths``, ``image_folders``, ``model_path``, ``max_length``.

    Read from ``train_dataloader.dataset`` without importing XTuner (the
    config file is parsed, not run); a config written some other way falls
    back to mmengine's loader. Raises :class:`BookError` when the config has
    no InternVL dataset to check.
    """
    config = Path(config)
    names: dict[str, Any] = {}
    try:
        for node in ast.parse(config.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                names[node.targets[0].id] = _literal(node.value, names)
    except SyntaxError as exc:
        raise BookError(
            f"{config}:{exc.lineno}: the config is not valid Python ({exc.msg}); rewrite it with "
            "helpers.config.write(recipe, path)"
        ) from exc
    dataset = (
        names.get("train_dataloader", {}).get("dataset") if isinstance(names.get("train_dataloader"), dict) else None
    )
    keys = ("data_paths", "image_folders", "model_path", "max_length")
    if not isinstance(dataset, dict) or any(isinstance(dataset.get(k), _Unknown) for k in keys):
        from mmengine.config import Config

        dataset = Config.fromfile(str(config)).get("train_dataloader", {}).get("dataset")
    if not isinstance(dataset, dict) or not all(k in dataset for k in keys[:3]):
        raise BookError(
            f"{config} has no train_dataloader.dataset with data_paths, image_folders and model_path "
            "(XTuner's InternVL_V1_5_Dataset), so its data cannot be checked before training; write "
            "the config with helpers.config.write(recipe, path), or pass check_data=False"
        )
    return {
        "data_paths": dataset["data_paths"],
        "image_folders": dataset["image_folders"],
        "model_path": dataset["model_path"],
        "max_length": int(dataset.get("max_length", 8192)),
    }


#: XTuner's InternVL dataset prints ``Error: <exception>`` and trains on a random other sample instead;
#: the line comes once from ``print`` and once through mmengine's logger (``... - mmengine - INFO - Error: ...``).
DATASET_ERROR_RE = re.compile(r"^(?:.* - mmengine - \w+ - )?Error: (.*)$")
_QUOTED_PATH_RE = re.compile(r"'([^']+)'")


def dataset_errors(log_text: str) -> list[str]:
    """The distinct ``Error: ...`` messages XTuner's dataset printed in a training log, in order.

    >>> dataset_errors("Error: [Errno 2] No such file or directory: '/d/a.jpg'\\n"
    ...                "11/23 10:41:00 - mmengine - INFO - Error: [Errno 2] No such file or directory: '/d/a.jpg'")
    ["[Errno 2] No such file or directory: '/d/a.jpg'"]
    """
    found: list[str] = []
    for line in log_text.splitlines():
        m = DATASET_ERROR_RE.match(line.strip())
        if m and m.group(1).strip() not in found:
            found.append(m.group(1).strip())
    return found


def _records_using(paths: set[str], settings: dict[str, Any] | None, cwd: Path) -> dict[str, list[str]]:
    """For each image path, the records (``file:line record i``) whose image resolves to it."""
    if not settings or not paths:
        return {}
    from .data import _read_items  # the validator's reader: line numbers, no exceptions on a bad file

    files = settings["data_paths"] if isinstance(settings["data_paths"], list) else [settings["data_paths"]]
    folders = (
        settings["image_folders"]
        if isinstance(settings["image_folders"], list)
        else [settings["image_folders"]] * len(files)
    )
    wanted = {os.path.normpath(p): p for p in paths}
    out: dict[str, list[str]] = {}
    for file, folder in zip(files, folders):
        file = cwd / Path(str(file))
        try:
            items, _ = _read_items(file)
        except OSError:
            continue
        for index, (obj, line) in enumerate(items or []):
            image = obj.get("image") if isinstance(obj, dict) else None
            image = image[0] if isinstance(image, list) and image else image
            if isinstance(image, str):
                full = os.path.normpath(os.path.join(str(cwd / Path(str(folder))), image))
                if full in wanted:
                    out.setdefault(wanted[full], []).append(f"{file.name}:{line} record {index}")
    return out


def check_train_log(
    log_path: str | Path, *, since: int = 0, settings: dict[str, Any] | None = None, cwd: str | Path | None = None
) -> None:
    """Raise :class:`~helpers.errors.RunError` if XTuner's dataset printed ``Error:`` lines in this run.

    ``since`` is the byte offset where this run's part of ``log_path`` (the
    ``train.log`` :func:`train` keeps: XTuner's printed stdout and its logger)
    begins. Every such line means a sample could not be read and XTuner
    silently trained on a random other one instead. The error names each
    message, the records that use the image it mentions (``settings`` from
    :func:`dataset_settings`), and the fix.
    """
    log_path = Path(log_path)
    with open(log_path, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", errors="replace")
    errors = dataset_errors(text)
    if not errors:
        return
    paths = {p for e in errors for p in _QUOTED_PATH_RE.findall(e)}
    users = _records_using(paths, settings, Path(cwd) if cwd else log_path.parent)
    lines = []
    for e in errors:
        named = [r for p in _QUOTED_PATH_RE.findall(e) for r in users.get(p, [])]
        lines.append(f"- Error: {e}" + (f" (used by {', '.join(named)})" if named else ""))
    raise RunError(
        f"XTuner's dataset could not read {len(errors)} sample(s) during training and silently trained on random "
        f"other samples instead; its Error lines in {log_path}:\n" + "\n".join(lines) + "\n"
        "Fix: restore or correct those images (helpers.data.validate(data_path, image_folder=...) lists every "
        "problem), then train again from scratch in a new work_dir (this run's weights saw substituted samples)."
    )


# --------------------------------------------------------------------------- what to do with a work dir

RUN_RECORD = "run.json"  # written by train() into the work dir: the config's hash, progress and time


@dataclass(frozen=True)
class RunPlan:
    """What :func:`plan_run` decided for a work dir, and the one line that says so.

    ``action`` is ``"start"`` (nothing to continue), ``"resume"`` (an unfinished
    run of the same config: ``resume_from`` and the iterations that will run
    again), or ``"done"`` (this config already finished there: nothing to do).
    ``kept`` is where an earlier run was moved aside, if one was.
    """

    action: str
    work_dir: Path
    message: str
    resume_from: Path | None = None
    repeated: tuple[int, int] | None = None
    kept: Path | None = None


def config_hash(config: str | Path) -> str:
    """SHA-256 of the config file: two runs share a work dir only if their configs are identical."""
    import hashlib

    return hashlib.sha256(Path(config).read_bytes()).hexdigest()


def read_run_record(work_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` that :func:`train` keeps in a work dir (``{}`` when there is none)."""
    path = Path(work_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _logged_steps(work_dir: Path) -> tuple[int, int | None]:
    """The last iteration logged in ``train.log`` and the run's total, as XTuner printed them."""
    last, total = 0, None
    log = work_dir / "train.log"
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            info = parse_log_line(line)
            if info:
                last, total = max(last, info["step"]), info["total"]
    return last, total


def _move_aside(work_dir: Path) -> Path:
    """Rename an earlier run's folder to ``<name>.old-<timestamp>`` (never delete it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = work_dir.with_name(f"{work_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = work_dir.with_name(f"{work_dir.name}.old-{stamp}-{n}")
    work_dir.rename(target)
    return target


def plan_run(config: str | Path, work_dir: str | Path, *, fresh: bool = False) -> RunPlan:
    """Decide, before training, what to do with ``work_dir``; nothing already trained is ever lost.

    - An unfinished run of the same config resumes from its last checkpoint
      (the iterations logged after that checkpoint will run again).
    - A finished run of the same config is not trained again (``"done"``).
    - A run of a *different* config, or any earlier run when ``fresh=True``,
      is moved aside to ``<work_dir>.old-<timestamp>`` and training starts
      afresh in ``work_dir``.

    >>> plan_run(__file__, "/nonexistent/work").action
    'start'
    """
    config, work_dir = Path(config), Path(work_dir)
    earlier = work_dir.is_dir() and any(work_dir.iterdir())
    if not earlier:
        return RunPlan("start", work_dir, f"starting a new run in {work_dir}")
    record = read_run_record(work_dir)
    same = record.get("config_sha256") == config_hash(config)
    if fresh or not same:
        why = "fresh=True" if fresh else "its config differs from this one"
        kept = _move_aside(work_dir)
        return RunPlan(
            "start", work_dir, f"starting afresh in {work_dir} ({why}); the earlier run is kept in {kept}", kept=kept
        )
    ckpt = last_checkpoint(work_dir)
    logged, total = _logged_steps(work_dir)
    if record.get("finished") and ckpt is not None:
        return RunPlan(
            "done",
            work_dir,
            f"{work_dir} already holds a finished run of this config "
            f"({ckpt.name}, {record.get('steps')} iterations): not training again; pass fresh=True "
            "to retrain (the old run is kept)",
            resume_from=ckpt,
        )
    if ckpt is None:
        return RunPlan(
            "start",
            work_dir,
            f"the earlier run in {work_dir} left no checkpoint: starting from iteration 1 "
            f"(iterations 1-{logged} will run again)"
            if logged
            else f"the earlier run in {work_dir} left no checkpoint: starting from iteration 1",
            repeated=(1, logged) if logged else None,
        )
    at = _step(ckpt)
    repeated = (at + 1, logged) if logged > at else None
    again = f"iterations {at + 1}-{logged} will run again" if repeated else "no iteration is repeated"
    return RunPlan(
        "resume",
        work_dir,
        f"resuming the interrupted run in {work_dir} from {ckpt.name} (iteration {at} of {total or '?'}); {again}",
        resume_from=ckpt,
        repeated=repeated,
    )


def _write_run_record(work_dir: Path, config: Path, result: TrainResult | None, seconds_before: float) -> None:
    """Keep, in the work dir, which config trains there, how far it got and how long it took.

    Written before XTuner starts (``result=None``: a run killed at any moment
    is still recognised as this config's) and again when it ends.
    """
    finished = bool(result and result.ok and result.total_steps is not None and result.steps >= result.total_steps)
    record = {
        "config": str(config),
        "config_sha256": config_hash(config),
        "steps": result.steps if result else None,
        "total_steps": result.total_steps if result else None,
        "finished": finished,
        "seconds": round(seconds_before + (result.seconds if result else 0.0), 1),
        "last_checkpoint": str(last_checkpoint(work_dir) or ""),
    }
    (work_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def previous_result(work_dir: str | Path) -> TrainResult:
    """The :class:`TrainResult` of the run recorded in ``work_dir`` (for a plan that is ``"done"``)."""
    work_dir = Path(work_dir)
    record = read_run_record(work_dir)
    rows = read_scalars(work_dir)
    return TrainResult(
        work_dir,
        0,
        float(record.get("seconds") or 0.0),
        int(record.get("steps") or 0),
        record.get("total_steps"),
        rows[-1]["loss"] if rows else None,
        list_checkpoints(work_dir),
        work_dir / "train.log",
    )


def command(
    config: str | Path,
    work_dir: str | Path,
    *,
    gpus: int = 0,
    deepspeed: str | None = None,
    resume_from: str | Path | None = None,
) -> list[str]:
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
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(gpus),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "helpers.xtuner_launch",
            *args,
            "--launcher",
            "pytorch",
        ]
    return [sys.executable, "-m", "helpers.xtuner_launch", *args]


def xtuner_env() -> dict[str, str]:
    """The environment for XTuner's tools started as processes from a notebook.

    ``xtuner`` starts ``python`` from ``PATH`` (the first fix listed in
    :mod:`helpers.xtuner_launch`), so this interpreter's folder goes first;
    the repository goes on ``PYTHONPATH`` for the book's patches; and torch may
    unpickle the checkpoints XTuner wrote here
    (:func:`helpers.compat.trust_own_checkpoints` says why that is safe for
    our own files only).
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return env


def xtuner_command(*args: str | Path) -> list[str]:
    """``xtuner ARGS`` with this environment's ``xtuner`` script (not whichever ``PATH`` finds first)."""
    return [str(Path(sys.executable).parent / "xtuner"), *map(str, args)]


def run_watched(
    cmd: list[str], *, stdin: str | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in :func:`xtuner_env` under :mod:`helpers.procgroup`'s watchdog (no child outlives us)."""
    watched = [sys.executable, "-m", "helpers.procgroup", str(os.getpid()), "--", *cmd]
    return subprocess.run(watched, input=stdin, capture_output=True, text=True, env=xtuner_env(), cwd=cwd)


def xtuner(*args: str | Path, echo: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one of XTuner's own commands (``list-cfg``, ``copy-cfg``, ...) as a learner types it.

    Prints ``$ xtuner ARGS`` first when ``echo``. A failure raises
    :class:`~helpers.errors.RunError` with the end of what it printed. XTuner
    0.2.0's ``xtuner`` always exits 0 (``xtuner/entry_point.py`` runs the tool
    with ``subprocess.run`` and drops its exit status), so a Python traceback
    in its output counts as a failure too.
    """
    if echo:
        print("$ xtuner " + " ".join(map(str, args)), flush=True)
    proc = run_watched(xtuner_command(*args))
    if proc.returncode != 0 or "Traceback (most recent call last)" in proc.stderr:
        raise RunError(
            f"xtuner {' '.join(map(str, args))} failed (exit status {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


def _stream(proc: subprocess.Popen) -> Iterator[str]:
    assert proc.stdout is not None
    for raw in proc.stdout:
        yield raw.rstrip("\n")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train(
    config: str | Path,
    work_dir: str | Path,
    *,
    resume: bool | str | Path = "auto",
    gpus: int = 0,
    deepspeed: str | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
    env: dict[str, str] | None = None,
    check_data: bool = True,
) -> TrainResult:
    """Train with XTuner; return a :class:`TrainResult`. Raises BookError when the run fails.

    ``resume``: ``"auto"`` continues from the last checkpoint in ``work_dir``
    when there is one; a path resumes from that checkpoint; ``False`` starts
    afresh (it refuses to mix into a ``work_dir`` that already has checkpoints).
    ``stop_after_steps`` kills the run after that step is logged: the book
    uses it to demonstrate resuming an interrupted run.

    Before XTuner starts, the config's dataset is validated as XTuner will
    read it (:func:`helpers.data.check_training_data`: the model's tiling,
    ``max_length``); an error raises :class:`~helpers.errors.DatasetError`
    with the validator's report and nothing is started; warnings are printed
    and kept in ``result.dataset_report``. After the run, an ``Error:`` line
    from XTuner's dataset in this run's log (a sample it replaced by a random
    other one) raises :class:`~helpers.errors.RunError` (:func:`check_train_log`).

    XTuner runs under :mod:`helpers.procgroup`, a watchdog that ends every
    process of the run (ranks and dataloader workers included) when this
    call is interrupted (KeyboardInterrupt: the notebook's stop button), when
    this process gets SIGTERM or SIGINT, or when it dies.
    """
    config, work_dir = Path(config), Path(work_dir)
    if not config.exists():
        raise BookError(f"config {config} does not exist; write one with helpers.config.write(recipe, path)")
    if deepspeed:  # before anything starts: the name, the package, ZeRO-3 with 4-bit weights
        from . import config as configs

        recipe_file = config.parent / "recipe.json"
        recipe = configs.Recipe.load(recipe_file) if recipe_file.is_file() else None
        configs.check_deepspeed(recipe or configs.Recipe("", "", "", quantization_llm=False), deepspeed)
        if gpus > 1 and not _cuda():
            raise UsageError(
                f"deepspeed={deepspeed!r} with {gpus} processes on CPUs: DeepSpeed's ZeRO all-gather fails "
                "over gloo (RuntimeError: Output 0 of Split is a view and is being modified inplace; "
                "deepspeed 0.18.9, measured). Fix: one process with DeepSpeed (nproc_per_node=1), or "
                f"{gpus} processes without it (deepspeed=None: PyTorch DDP, the same data-parallel training)."
            )
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from: Path | None = None
    if resume == "auto":
        found = last_checkpoint(work_dir)
        resume_from = check_checkpoint(found) if found is not None else None
    elif resume:
        resume_from = check_checkpoint(resume)  # type: ignore[arg-type]
    elif list_checkpoints(work_dir):
        raise BookError(
            f"{work_dir} already holds checkpoints {[p.name for p in list_checkpoints(work_dir)]}; "
            "resume=False would mix two runs there. Use another work_dir, delete them, or resume."
        )

    report = None
    if check_data:
        from .data import check_training_data

        settings: dict[str, Any] | None = dataset_settings(config)
        report = check_training_data(cwd=work_dir, **settings)  # raises DatasetError on any error
        if report.warnings:
            print(f"dataset warnings (training goes on):\n{report}", flush=True)
    else:
        try:  # only to name the records behind XTuner's Error lines after the run
            settings = dataset_settings(config)
        except BookError:
            settings = None
    prior = read_run_record(work_dir)
    seconds_before = float(prior.get("seconds") or 0.0) if prior.get("config_sha256") == config_hash(config) else 0.0
    _write_run_record(work_dir, config, None, seconds_before)
    cmd = command(config, work_dir, gpus=gpus, deepspeed=deepspeed, resume_from=resume_from)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), child_env.get("PYTHONPATH")]))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = work_dir / "train.log"
    bar = None
    steps, total, last_loss = 0, None, None
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        since = log.tell()
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        # the watchdog puts XTuner in a process group of its own and ends all of it with us (see procgroup)
        watched = [sys.executable, "-m", "helpers.procgroup", str(os.getpid()), "--", *cmd]
        proc = subprocess.Popen(
            watched, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env, cwd=work_dir
        )
        tail: list[str] = []
        try:
            for line in _stream(proc):
                log.write(line + "\n")
                log.flush()
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
                    bar.set_postfix(
                        loss=f"{last_loss:.4f}" if last_loss is not None else "-",
                        lr=f"{info.get('lr', float('nan')):.2e}",
                        eta=info.get("eta", "?"),
                    )
                    bar.refresh()
                if stop_after_steps is not None and steps >= stop_after_steps:
                    proc.send_signal(signal.SIGTERM)  # the watchdog SIGKILLs all of it: like a crash
                    break
        except BaseException:  # KeyboardInterrupt (the notebook's stop button), or anything else: end the run
            proc.send_signal(signal.SIGTERM)
            raise
        finally:
            returncode = proc.wait()
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - start
    result = TrainResult(
        work_dir,
        returncode,
        seconds,
        steps,
        total,
        last_loss,
        list_checkpoints(work_dir),
        log_path,
        resume_from,
        report,
    )
    _write_run_record(work_dir, config, result, seconds_before)
    check_train_log(log_path, since=since, settings=settings, cwd=work_dir)
    if returncode != 0 and stop_after_steps is None:
        raise BookError(
            f"XTuner training failed (exit code {returncode}); last lines of {log_path}:\n" + "\n".join(tail[-25:])
        )
    return result


def read_rank_losses(work_dir: str | Path) -> dict[int, dict[int, float]]:
    """Each process's own loss per iteration, ``{rank: {step: loss}}``, from a multi-process run.

    Written by :func:`helpers.xtuner_launch.log_every_ranks_loss` under torchrun
    (``work_dir/ranks/rank<R>.jsonl``); empty for a single-process run. When a
    resumed run repeats an iteration, the later value wins. Unlike
    :func:`read_scalars` these are single iterations, not running means.
    """
    from .xtuner_launch import RANK_LOG_DIR

    out: dict[int, dict[int, float]] = {}
    for path in sorted((Path(work_dir) / RANK_LOG_DIR).glob("rank*.jsonl")):
        rank = int(path.stem[4:])
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out.setdefault(rank, {})[int(row["step"])] = float(row["loss"])
    return out


def merged_losses(work_dir: str | Path) -> list[dict[str, Any]]:
    """The loss of the whole global batch per iteration: the mean over the ranks that logged it.

    With data parallelism every rank takes its own micro-batch and the
    gradients are averaged, so the mean of the ranks' losses is the loss the
    optimizer steps on (equal micro-batch sizes). Rows ``{step, loss, ranks}``.
    """
    by_rank = read_rank_losses(work_dir)
    steps = sorted({step for losses in by_rank.values() for step in losses})
    rows = []
    for step in steps:
        values = [losses[step] for losses in by_rank.values() if step in losses]
        rows.append({"step": step, "loss": sum(values) / len(values), "ranks": len(values)})
    return rows


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
