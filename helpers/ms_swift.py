"""The ms-swift route (notebook 12): check ms-swift's JSONL, build and run its commands offline.

ms-swift lives in an environment of its own, ``.venv-swift`` (``make swift``,
pins in ``requirements/swift.txt``): ms-swift 3.2.2 requires ``numpy<2.0``
and ``gradio`` (which caps pillow below 13), while the book pins numpy 2.4
and pillow 13. The notebook stays on the book's kernel and runs ms-swift's
command-line tools (``swift sft``, ``swift infer``, ``swift export``) and a
short Python script as child processes, each under :mod:`helpers.procgroup`
so that none outlives the notebook.

Three facts every command needs, in one place here:

- offline: ``HF_HUB_OFFLINE`` and friends, plus ``--check_model false`` for
  ``swift sft`` (ms-swift's trainer otherwise asks ModelScope whether a local
  model folder is the latest version, and retries three times without a network);
- ``--model_type internvl2``: the model folder is a local path, so ms-swift
  cannot guess the type from a hub name;
- ``--template internvl2_book`` registered by :mod:`helpers.swift_plugin`
  through ``--custom_register_path``: ms-swift 3.2's template assumes 256
  image tokens per tile, the tiny model has 64.

>>> cmd = sft_command("/m", "/d/train.jsonl", "/o", lora_rank=8, lora_alpha=16, lr=1e-4, max_steps=4)
>>> cmd[1:3], cmd[cmd.index("--train_type") + 1], cmd[cmd.index("--check_model") + 1]
(['sft', '--model'], 'lora', 'false')
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import REPO_DIR
from .errors import DatasetError, RunError, UsageError

__all__ = [
    "SWIFT_VENV",
    "PLUGIN",
    "TEMPLATE",
    "MODEL_TYPE",
    "OFFLINE_ENV",
    "swift_executable",
    "check_jsonl",
    "jsonl_problems",
    "common_args",
    "infer_command",
    "sft_command",
    "export_command",
    "SwiftRun",
    "run",
    "last_checkpoint",
    "read_jsonl",
    "versions",
    "training_log",
]

SWIFT_VENV = REPO_DIR / ".venv-swift"
PLUGIN = Path(__file__).with_name("swift_plugin.py")
TEMPLATE = "internvl2_book"  # helpers.swift_plugin.TEMPLATE (that module imports ms-swift where it can)
MODEL_TYPE = "internvl2"
# no hub at all: Hugging Face and ModelScope stay offline, the model and data are local folders
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MODELSCOPE_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    # a notebook kernel exports its inline backend, which ms-swift's own matplotlib cannot load
    "MPLBACKEND": "Agg",
}


def swift_executable(name: str = "swift", venv: str | Path = SWIFT_VENV) -> Path:
    """The path of ``name`` (``swift`` or ``python``) in ms-swift's environment; a clear error if it is missing."""
    path = Path(venv) / "bin" / name
    if not path.exists():
        raise RunError(
            f"{path} does not exist: ms-swift's environment is not installed. "
            "Run `make swift` (or `bash tools/install-swift.sh`) from the repository root, then run this again."
        )
    return path


def versions(
    names: Sequence[str] = ("ms-swift", "transformers", "peft", "torch", "numpy", "pillow"),
    venv: str | Path = SWIFT_VENV,
) -> dict[str, str | None]:
    """The installed versions of ``names`` in ms-swift's environment, read from its metadata (no Python started)."""
    import importlib.metadata as md

    sites = [str(p) for p in Path(venv).glob("lib/python3*/site-packages")]
    found = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions(path=sites)}
    return {name: found.get(name.lower()) for name in names}


# --------------------------------------------------------------------------- data checks


def jsonl_problems(path: str | Path, cwd: str | Path | None = None) -> list[str]:
    """Every reason ms-swift's InternVL2 training would refuse or misread ``path``, one message per line.

    ms-swift trains InternVL2 only on records with images (the course notes:
    "InternVL系列模型的训练只支持带有图片的数据集"), so each line needs a
    ``query``, a ``response`` and an ``images`` list of existing files, and
    ``<image>`` tags, when the query has them, must match the images.
    Relative image paths are resolved as ms-swift resolves them, against the
    working folder its command runs in: ``cwd`` (give the one you pass to
    :func:`run`), by default this process's.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "bad.jsonl"
    >>> _ = p.write_text('{"query": "hi", "response": "ho"}\\n', encoding="utf-8")
    >>> print(jsonl_problems(p)[0])  # doctest: +ELLIPSIS
    bad.jsonl line 1: no "images" field. ...
    """
    path = Path(path)
    base = Path(cwd) if cwd is not None else Path.cwd()
    if not path.is_file():
        return [f"{path}: no such file. Write it with helpers.data.to_swift_jsonl(split, path)."]
    problems: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not JSON ({err.msg}, column {err.colno}). Each line must be one JSON object.")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: a JSON {type(row).__name__}, not an object with query/response/images.")
            continue
        for field in ("query", "response"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                problems.append(f'{where}: "{field}" is missing or empty. Give it the {field} text.')
        if "images" not in row:
            problems.append(
                f'{where}: no "images" field. ms-swift trains InternVL2 only on records with an image: '
                f'add "images": ["/path/to/photo.jpg"] or remove the line.'
            )
            continue
        images = row["images"]
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not images:
            problems.append(
                f'{where}: "images" is empty, a text-only record. ms-swift trains InternVL2 only on records '
                f"with an image: give it one, or remove the line."
            )
            continue
        for i, image in enumerate(images):
            if not isinstance(image, str) or not image:
                problems.append(f"{where}: images[{i}] is {image!r}, not a file path.")
                continue
            file = Path(image) if Path(image).is_absolute() else base / image
            if not file.is_file():
                problems.append(
                    f"{where}: images[{i}] {image!r} does not exist. Fix the path (relative paths start "
                    f"where ms-swift runs, here {base}; absolute ones travel) or remove the line."
                )
        tags = row.get("query", "").count("<image>") if isinstance(row.get("query"), str) else 0
        if tags and tags != len(images):
            problems.append(
                f'{where}: the query has {tags} "<image>" tags for {len(images)} images. Use one tag per image.'
            )
    if not problems and not any(line.strip() for line in lines):
        problems.append(f"{path}: empty, no record to train on.")
    return problems


def check_jsonl(path: str | Path, cwd: str | Path | None = None) -> int:
    """Raise :class:`DatasetError` listing every problem of ``path``; return its number of records.

    Run it before ``swift sft`` or ``swift infer --val_dataset``: ms-swift's own
    error for these cases is a traceback from the middle of its data pipeline.
    ``cwd``: the folder ms-swift will run in (see :func:`jsonl_problems`).
    """
    problems = jsonl_problems(path, cwd)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{path} is not ready for ms-swift ({len(problems)} problems):\n  {shown}{more}")
    return sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (ms-swift's ``--result_path`` output, for one)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- commands


def common_args(plugin: str | Path = PLUGIN) -> list[str]:
    """The arguments every command on an InternVL2 folder needs here: type, template and the plugin that defines it."""
    return ["--model_type", MODEL_TYPE, "--template", TEMPLATE, "--custom_register_path", str(plugin)]


def infer_command(
    *,
    model: str | Path | None = None,
    ckpt_dir: str | Path | None = None,
    val_dataset: str | Path | None = None,
    result_path: str | Path | None = None,
    max_new_tokens: int = 32,
    swift: str | Path = "swift",
) -> list[str]:
    """``swift infer`` on a base model folder (``model``) or a trained checkpoint (``ckpt_dir``).

    With ``ckpt_dir`` the command reads the base model, type, template and
    plugin back from the checkpoint's ``args.json`` (``--load_dataset_config true``
    also reads the training's dataset settings), as the course notes do.

    >>> infer_command(ckpt_dir="/o/checkpoint-16")[:5]
    ['swift', 'infer', '--ckpt_dir', '/o/checkpoint-16', '--load_dataset_config']
    """
    if (model is None) == (ckpt_dir is None):
        raise UsageError("give exactly one of model (a base model folder) or ckpt_dir (a swift sft checkpoint)")
    cmd = [str(swift), "infer"]
    if ckpt_dir is not None:
        cmd += ["--ckpt_dir", str(ckpt_dir), "--load_dataset_config", "true"]
    else:
        cmd += ["--model", str(model), *common_args()]
    cmd += ["--infer_backend", "pt", "--max_new_tokens", str(max_new_tokens), "--temperature", "0"]
    if val_dataset is not None:
        cmd += ["--val_dataset", str(val_dataset)]
    if result_path is not None:
        cmd += ["--result_path", str(result_path)]
    return cmd


def sft_command(
    model: str | Path,
    dataset: str | Path,
    output_dir: str | Path,
    *,
    lora_rank: int,
    lora_alpha: int,
    lr: float,
    max_steps: int,
    batch_size: int = 1,
    accumulation: int = 1,
    max_length: int = 2048,
    seed: int = 0,
    gpu: bool = False,
    swift: str | Path = "swift",
) -> list[str]:
    """``swift sft --train_type lora`` on a local InternVL2 folder and a JSONL file.

    On the CPU it trains in float32 without gradient checkpointing (nothing to
    save memory for); ``gpu=True`` adds the course's GPU flags: bf16,
    gradient checkpointing, and no flash attention (the book's InternVL code
    falls back to PyTorch attention; the notes' ``--use_flash_attn false``
    is ``--attn_impl eager`` in ms-swift 3).

    >>> cmd = sft_command("/m", "/t.jsonl", "/o", lora_rank=8, lora_alpha=16, lr=1e-4, max_steps=4, gpu=True)
    >>> cmd[cmd.index("--torch_dtype") + 1], cmd[cmd.index("--gradient_checkpointing") + 1]
    ('bfloat16', 'true')
    """
    cmd = [str(swift), "sft", "--model", str(model), *common_args()]
    cmd += ["--train_type", "lora", "--dataset", str(dataset), "--split_dataset_ratio", "0"]
    cmd += ["--lora_rank", str(lora_rank), "--lora_alpha", str(lora_alpha), "--learning_rate", repr(lr)]
    cmd += ["--max_steps", str(max_steps), "--per_device_train_batch_size", str(batch_size)]
    cmd += ["--gradient_accumulation_steps", str(accumulation), "--max_length", str(max_length)]
    cmd += ["--output_dir", str(output_dir), "--save_steps", str(max_steps), "--logging_steps", "1"]
    cmd += ["--seed", str(seed), "--data_seed", str(seed), "--report_to", "none", "--check_model", "false"]
    cmd += ["--dataloader_num_workers", "0", "--save_only_model", "true"]
    if gpu:
        cmd += ["--torch_dtype", "bfloat16", "--gradient_checkpointing", "true", "--attn_impl", "eager"]
    else:
        cmd += ["--torch_dtype", "float32", "--gradient_checkpointing", "false"]
    return cmd


def export_command(ckpt_dir: str | Path, swift: str | Path = "swift") -> list[str]:
    """``swift export --merge_lora true``: writes ``<ckpt_dir>-merged``, a full model folder.

    >>> export_command("/o/checkpoint-16")
    ['swift', 'export', '--ckpt_dir', '/o/checkpoint-16', '--merge_lora', 'true']
    """
    return [str(swift), "export", "--ckpt_dir", str(ckpt_dir), "--merge_lora", "true"]


# --------------------------------------------------------------------------- running


@dataclass
class SwiftRun:
    """What a command did: its command line, exit code, time, and full output (also in ``log``)."""

    cmd: list[str]
    returncode: int
    seconds: float
    output: str
    log: Path

    def lines(self, *needles: str) -> list[str]:
        r"""The output lines containing any of ``needles`` (progress-bar redraws and the echoed command removed).

        >>> text = "$ swift infer --x\nrun sh: `infer.py --x`\n10%\r[rank-1] done\n"
        >>> SwiftRun(["swift"], 0, 1.0, text, Path("log")).lines("x", "done")
        ['[rank-1] done']
        """
        out = []
        for raw in self.output.splitlines():
            line = raw.split("\r")[-1].strip()
            if line.startswith(("$ ", "run sh:", "[INFO:swift] args:")):
                continue
            if line and any(n in line for n in needles):
                out.append(line)
        return out


STEP = re.compile(r"'global_step/max_steps': '(\d+)/(\d+)'")
LOSS = re.compile(r"'loss': ([0-9.eE+-]+)")


def run(
    cmd: Sequence[str],
    log: str | Path,
    *,
    venv: str | Path = SWIFT_VENV,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = True,
    progress: str | None = None,
) -> SwiftRun:
    """Run an ms-swift command (``swift ...`` or ``python ...`` of ms-swift's environment) offline.

    The first word ``swift`` or ``python`` is looked up in ``venv``. The
    command runs under :mod:`helpers.procgroup`, so it and everything it starts
    end with the notebook; its output goes to ``log``. ``progress`` names a
    progress bar fed from the ``global_step/max_steps`` ms-swift logs while it
    trains. With ``check`` a non-zero exit raises :class:`RunError` with the
    last lines of the output.
    """
    cmd = list(cmd)
    if cmd and cmd[0] in ("swift", "python"):
        cmd[0] = str(swift_executable(cmd[0], venv))
    child_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    child_env.pop("PYTHONPATH", None)  # the book's packages must not leak into ms-swift's environment
    child_env.pop("VIRTUAL_ENV", None)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    watched = [sys.executable, "-m", "helpers.procgroup", str(os.getpid()), "--", *cmd]
    bar = None
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            watched,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            cwd=str(cwd or log.parent),
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                step = STEP.search(line) if progress else None
                if step:
                    if bar is None:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=int(step.group(2)), desc=progress, unit="step")
                    bar.n = int(step.group(1))
                    loss = LOSS.search(line)
                    if loss:
                        bar.set_postfix(loss=f"{float(loss.group(1)):.3f}")
                    bar.refresh()
            returncode = proc.wait()
        except BaseException:  # the notebook's stop button: end the whole command
            proc.terminate()
            proc.wait()
            raise
        finally:
            if bar is not None:
                bar.close()
    result = SwiftRun(cmd, returncode, time.perf_counter() - start, log.read_text(encoding="utf-8"), log)
    if check and returncode != 0:
        tail = "\n".join(result.output.splitlines()[-15:])
        raise RunError(f"`{' '.join(cmd[:2])}` failed (exit {returncode}); full output in {log}. Last lines:\n{tail}")
    return result


def training_log(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The step records (``loss``, ``learning_rate``, ``elapsed_time`` ...) of the run ``checkpoint`` is from."""
    path = Path(checkpoint).parent / "logging.jsonl"
    return [row for row in read_jsonl(path) if "loss" in row] if path.is_file() else []


def last_checkpoint(output_dir: str | Path) -> Path:
    """The newest ``checkpoint-N`` folder ``swift sft`` wrote under ``output_dir`` (its ``vN-DATE`` run folders)."""
    found = sorted(
        Path(output_dir).glob("v*-*/checkpoint-*[0-9]"),
        key=lambda p: (p.parent.name.split("-", 1)[0][1:].zfill(6), int(p.name.rsplit("-", 1)[1])),
    )
    if not found:
        raise RunError(f"no checkpoint-N folder under {output_dir}: did `swift sft` finish? See its log.")
    return found[-1]
