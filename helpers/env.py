"""What can this machine run? Versions, hardware, capability probes and a verdict.

Notebook ``00_environment`` teaches this module; every later notebook relies on
what it writes (``<output_dir>/env.json``) and on :func:`setup`, which resolves
the common parameters (paths, device, seed) the same way in every notebook.

Nothing here crashes because a package is missing: a missing package is a
``None`` version or a probe that says ``ok=False`` and why.

Run it from a shell as ``python -m helpers.env``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from helpers import REPO_DIR, repo_path
from helpers.errors import MissingOutputError, ProfileError, UsageError

__all__ = [
    "PACKAGES",
    "GPU_PROFILE_MIN_GB",
    "SMALL_GPU_MIN_GB",
    "PINS",
    "NOT_HERE",
    "PIN_FILES",
    "read_pins",
    "book_pins",
    "Probe",
    "GPUInfo",
    "Table",
    "EnvReport",
    "Verdict",
    "Session",
    "PROBES",
    "probe_bnb_4bit",
    "probe_flash_attn",
    "probe_lmdeploy",
    "probe_xtuner",
    "report",
    "verdict",
    "pins",
    "save",
    "load",
    "package_version",
    "require",
    "resolve_device",
    "setup",
    "main",
]

#: Distributions whose versions the report lists, in the order shown.
PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "peft",
    "bitsandbytes",
    "xtuner",
    "mmengine",
    "lmdeploy",
    "papermill",
    "jupyter-book",
    "matplotlib",
)

#: The smallest GPU (GiB, as PyTorch reports it) on which the ``gpu`` profile (InternVL2-2B QLoRA) is
#: chosen. Cards sold as 16 GB report less than 16 GiB (a T4 reports 14.75); on them the fast recipe
#: at batch 2 x 8 peaked at 8.3 GiB on 13-tile samples (benchmarks/results/train-16gbc-13-h200.json).
GPU_PROFILE_MIN_GB = 14.5

#: Below :data:`GPU_PROFILE_MIN_GB`, from this many GiB (cards sold as 12 GB report about 11.8) the
#: verdict still runs ``tiny`` but names the 12 GB setting of the one-GPU guide: the fast recipe without
#: compile at batch 1 x 16 peaked at 6.9 GiB on 13-tile samples (train-16gb-13-h200.json).
SMALL_GPU_MIN_GB = 11.0

#: The GPU memory (GiB) from which the course's own recipe (batch 4 x 4, fp16 AMP, eager attention)
#: is advised: on CLoT's 13-tile samples it peaked at 22.7 GiB allocated and 30.2 GiB reserved
#: (benchmarks/results/train-course-13-h200.json). Below it, the fast recipe's parameters file.
COURSE_RECIPE_MIN_GB = 40.0

#: The requirement files that hold the book's pins, the single source of versions (``make install``
#: installs them; ``environment.yml`` is generated from them).
PIN_FILES: tuple[str, ...] = ("base.txt", "no-deps.txt", "deepspeed.txt")

#: Why the packages notebook 00 checks are pinned; their versions are read from :data:`PIN_FILES`
#: (:func:`book_pins`), so they live in one place. ``NOT_HERE`` packages are deliberately not in
#: this environment.
PINS: dict[str, str] = {
    "xtuner": "the newest XTuner on PyPI; it ships the InternVL2 QLoRA configs and the InternVL_V1_5 wrapper.",
    "transformers": "xtuner 0.2.0 pins it exactly.",
    "mmengine": "xtuner 0.2.0 pins it; it runs XTuner's training loop.",
    "bitsandbytes": "xtuner asks for 0.45.0, which has no CPU 4-bit and no CUDA 13 build.",
    "peft": "both xtuner (>=0.14) and lmdeploy (<=0.14.0) accept it.",
    "torch": "paired with torchvision: PyPI's torchvision fails to import beside torch 2.13.0 CPU.",
    "torchvision": "xtuner's InternVL dataset imports torchvision.transforms, so it must import.",
    "timm": "the official InternVL2 model code imports it; transformers refuses remote code with a missing import.",
    "deepspeed": "the course's --deepspeed deepspeed_zero1/2; 0.19 removed a module mmengine 0.10.6 imports.",
    "jupyter-book": "the last Sphinx-based release, the one that reads _config.yml and _toc.yml.",
    "papermill": "executes the notebooks with parameters (the tested version).",
    "gradio": "the web demo; installed without deps because every release caps pillow below the book's 13.",
}
NOT_HERE: dict[str, str] = {
    "lmdeploy": "kept in its own environment: it needs transformers>=4.56 and has no CPU backend.",
}


def read_pins(path: str | Path) -> dict[str, str]:
    r"""The ``name==version`` lines of one requirements file, by normalised name (``pydantic_core`` ->
    ``pydantic-core``), comments dropped.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.txt"
    >>> _ = f.write_text("# why\nPyYAML==6.0.3   # yaml\npydantic_core==2.50.5\n")
    >>> read_pins(f)
    {'pyyaml': '6.0.3', 'pydantic-core': '2.50.5'}
    """
    out = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise UsageError(f"{path}, line {number}: {line!r} is not an exact pin: write name==version")
        out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def book_pins(folder: str | Path | None = None) -> dict[str, str]:
    """Every version the book pins, from :data:`PIN_FILES` in ``requirements/`` (empty where the folder is
    absent, e.g. a copy of ``helpers`` without the repository)."""
    folder = Path(folder) if folder is not None else repo_path("requirements")
    pins: dict[str, str] = {}
    for name in PIN_FILES:
        if (folder / name).exists():
            pins.update(read_pins(folder / name))
    return pins


_GIB = 1024**3


# --------------------------------------------------------------------------- data


class Probe(NamedTuple):
    """The answer of one capability probe: ``ok`` and one sentence saying why."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class GPUInfo:
    """One CUDA device: name, memory in GiB and compute capability ``(major, minor)``."""

    name: str
    memory_gb: float
    capability: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.name} ({self.memory_gb:.0f} GiB, sm{self.capability[0]}{self.capability[1]})"


@dataclass
class Table:
    """A small table that renders as HTML in a notebook and as aligned text elsewhere."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str = ""

    def __str__(self) -> str:
        cells = [self.headers, *self.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.headers))]
        lines = [self.caption] if self.caption else []
        for n, row in enumerate(cells):
            lines.append("  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<th style='text-align:left'>{e(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{e(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption>{e(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's text/plain: the same as str()


@dataclass
class EnvReport:
    """Everything :func:`report` found out about this machine.

    Versions are ``None`` for packages that are not installed. ``probes`` maps a
    probe name (``bnb_4bit``, ``flash_attn``, ``lmdeploy``, ``xtuner``) to its
    :class:`Probe`; it is empty when the report was made with ``probes=False``.
    """

    python: str
    os: str
    versions: dict[str, str | None]
    cpu_cores: int
    ram_total_gb: float
    ram_available_gb: float
    disk_free_gb: float
    cuda_available: bool
    gpus: list[GPUInfo] = field(default_factory=list)
    cuda_version: str | None = None
    bf16_supported: bool = False
    probes: dict[str, Probe] = field(default_factory=dict)

    @property
    def max_gpu_memory_gb(self) -> float:
        """Memory of the largest GPU in GiB, ``0.0`` without CUDA."""
        return max((g.memory_gb for g in self.gpus), default=0.0)

    def rows(self) -> list[tuple[str, str, str]]:
        """``(section, item, value)`` rows, the content of both renderings."""
        rows: list[tuple[str, str, str]] = [
            ("System", "Python", self.python),
            ("System", "OS", self.os),
        ]
        rows += [("Packages", name, version or "not installed") for name, version in self.versions.items()]
        rows += [
            ("Hardware", "CPU cores", str(self.cpu_cores)),
            ("Hardware", "RAM total / available", f"{self.ram_total_gb:.1f} / {self.ram_available_gb:.1f} GiB"),
            ("Hardware", "Free disk (repo folder)", f"{self.disk_free_gb:.1f} GiB"),
            ("Hardware", "CUDA available", "yes" if self.cuda_available else "no"),
        ]
        if self.cuda_available:
            rows += [("Hardware", f"GPU {i}", str(g)) for i, g in enumerate(self.gpus)]
            rows += [
                ("Hardware", "CUDA runtime (torch)", self.cuda_version or "unknown"),
                ("Hardware", "bf16 supported", "yes" if self.bf16_supported else "no"),
            ]
        rows += [("Probes", name, f"{'ok' if p.ok else 'no'}: {p.reason}") for name, p in self.probes.items()]
        return rows

    def table(self, section: str | None = None) -> Table:
        """One section ("System", "Packages", "Hardware", "Probes") as a :class:`Table`, or all of it."""
        if section is None:
            return Table(("Section", "Item", "Value"), self.rows(), "Environment report")
        rows = [(item, value) for sec, item, value in self.rows() if sec == section]
        return Table(("Item", "Value"), rows, section)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what :func:`save` writes under ``"report"``)."""
        d = dataclasses.asdict(self)
        d["probes"] = {k: {"ok": p.ok, "reason": p.reason} for k, p in self.probes.items()}
        return d

    def __str__(self) -> str:
        return _text_table(self.rows())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's text/plain: the same as str()


@dataclass
class Verdict:
    """Which profile to run, why, what will be skipped and what blocks the book.

    ``skipped`` and ``blockers`` hold one sentence each. A skipped item has a
    fallback (the book still runs); a blocker stops the training notebooks.
    """

    profile: str
    reason: str
    skipped: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str]]:
        rows = [("Verdict", "profile", f"{self.profile}: {self.reason}")]
        rows += [("Verdict", "skipped", s) for s in self.skipped]
        rows += [("Verdict", "blocker", s) for s in self.blockers]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return _text_table(self.rows())

    def _repr_html_(self) -> str:
        return Table(("Section", "Item", "Value"), self.rows(), "Verdict")._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's text/plain: the same as str()


def _text_table(rows: list[tuple[str, str, str]]) -> str:
    width = max((len(item) for _, item, _ in rows), default=0)
    lines, section = [], None
    for sec, item, value in rows:
        if sec != section:
            lines.append(f"{sec}:")
            section = sec
        lines.append(f"  {item:<{width}}  {value}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- facts


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed.

    >>> package_version("surely-not-installed-xyz") is None
    True
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gb() -> tuple[float, float]:
    """(total, available) RAM in GiB, from psutil or ``/proc/meminfo``; zeros if unknown."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total / _GIB, vm.available / _GIB
    except ImportError:
        pass
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
        return info["MemTotal"] / _GIB, info.get("MemAvailable", info["MemFree"]) / _GIB
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def _cuda_facts() -> tuple[bool, list[GPUInfo], str | None, bool]:
    try:
        import torch
    except Exception:
        return False, [], None, False
    if not torch.cuda.is_available():
        return False, [], torch.version.cuda, False
    gpus = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        gpus.append(GPUInfo(prop.name, prop.total_memory / _GIB, (prop.major, prop.minor)))
    return True, gpus, torch.version.cuda, bool(torch.cuda.is_bf16_supported())


# --------------------------------------------------------------------------- probes


def probe_bnb_4bit() -> Probe:
    """Quantise a tiny layer to NF4 (double quantisation) and run forward + backward.

    This is the operation QLoRA relies on: frozen 4-bit base weights, gradients
    flowing through them to the LoRA adapters. It runs on CUDA when there is a
    GPU and on the CPU otherwise (bitsandbytes >= 0.48 has CPU 4-bit kernels).

    >>> ok, reason = probe_bnb_4bit()
    >>> isinstance(ok, bool) and reason.endswith(".")
    True
    """
    version = package_version("bitsandbytes")
    if version is None:
        return Probe(False, "bitsandbytes is not installed, so 4-bit QLoRA is not possible.")
    device = "this machine"
    try:
        import torch

        # bitsandbytes logs a warning at import on CPUs with AVX512-BF16 when the
        # optional `kernels` package is missing; it then uses its own kernels.
        bnb_logger = logging.getLogger("bitsandbytes")
        level = bnb_logger.level
        bnb_logger.setLevel(logging.ERROR)
        try:
            import bitsandbytes as bnb
        finally:
            bnb_logger.setLevel(level)

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        layer = bnb.nn.Linear4bit(
            64, 32, bias=True, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4"
        ).to(device)  # moving the layer to a device quantises its weight
        weight = layer.weight
        if weight.dtype != torch.uint8 or weight.quant_state is None:
            return Probe(False, f"bitsandbytes {version} did not quantise the weight on {device}.")
        x = torch.randn(4, 64, device=device, requires_grad=True)
        layer(x).float().pow(2).mean().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return Probe(False, f"bitsandbytes {version}: the backward pass gave no finite gradient on {device}.")
    except Exception as exc:
        return Probe(False, f"bitsandbytes {version} failed on {device}: {type(exc).__name__}: {_one_line(exc)}.")
    return Probe(
        True, f"bitsandbytes {version} ran an NF4 Linear4bit (double quantisation) forward and backward on {device}."
    )


def probe_flash_attn() -> Probe:
    """FlashAttention 2 needs the ``flash_attn`` package and a CUDA GPU of compute capability 8.0+."""
    if importlib.util.find_spec("flash_attn") is None:
        return Probe(False, "flash-attn is not installed.")
    cuda, gpus, _, _ = _cuda_facts()
    if not cuda:
        return Probe(False, "flash-attn is installed but there is no CUDA GPU.")
    if min(g.capability for g in gpus) < (8, 0):
        return Probe(False, f"flash-attn needs compute capability 8.0+ (Ampere or newer); found {gpus[0]}.")
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:
        return Probe(False, f"flash-attn does not import: {type(exc).__name__}: {_one_line(exc)}.")
    major, minor = gpus[0].capability
    return Probe(True, f"flash-attn {package_version('flash-attn')} imports and the GPU is sm{major}{minor}.")


def probe_lmdeploy() -> Probe:
    """LMDeploy serves models on CUDA GPUs only: it must import and find a GPU."""
    version = package_version("lmdeploy")
    if version is None:
        return Probe(
            False,
            "lmdeploy is not installed in this environment (it needs transformers>=4.56, so it lives in its own: "
            "on a CUDA machine `make gpu-env` creates it, and the runner executes notebooks 02 and 07 in its "
            "kernel `book-serve`).",
        )
    if not _cuda_facts()[0]:
        return Probe(
            False, f"lmdeploy {version} is installed but there is no CUDA GPU, and LMDeploy has no CPU backend."
        )
    try:
        importlib.import_module("lmdeploy")
    except Exception as exc:
        return Probe(False, f"lmdeploy {version} does not import: {type(exc).__name__}: {_one_line(exc)}.")
    return Probe(True, f"lmdeploy {version} imports and a CUDA GPU is present.")


def probe_xtuner() -> Probe:
    """XTuner's InternVL wrapper must import: ``from xtuner.model import InternVL_V1_5``."""
    version = package_version("xtuner")
    if version is None:
        return Probe(False, "xtuner is not installed (pip install xtuner==0.2.0).")
    try:
        with warnings.catch_warnings():
            # tqdm.auto, imported by xtuner, warns in notebooks without ipywidgets.
            warnings.filterwarnings("ignore", message="IProgress not found")
            from xtuner.model import InternVL_V1_5  # noqa: F401
    except Exception as exc:
        return Probe(
            False,
            f"xtuner {version} is installed but its InternVL wrapper does not import: "
            f"{type(exc).__name__}: {_one_line(exc)}.",
        )
    return Probe(True, f"xtuner {version} imports its InternVL_V1_5 model wrapper.")


#: The probes :func:`report` runs, by name.
PROBES: dict[str, Callable[[], Probe]] = {
    "bnb_4bit": probe_bnb_4bit,
    "flash_attn": probe_flash_attn,
    "lmdeploy": probe_lmdeploy,
    "xtuner": probe_xtuner,
}


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- report / verdict


def report(probes: bool = True) -> EnvReport:
    """Collect versions, hardware facts and (unless ``probes=False``) run the capability probes.

    Never raises because a package is missing. The probes import torch,
    bitsandbytes and xtuner, which takes 10-20 s on a small CPU machine.

    >>> r = report(probes=False)
    >>> r.cpu_cores >= 1 and "torch" in r.versions
    True
    """
    total, available = _memory_gb()
    cuda, gpus, cuda_version, bf16 = _cuda_facts()
    rep = EnvReport(
        python=f"{platform.python_version()} ({sys.executable})",
        os=platform.platform(),
        versions={name: package_version(name) for name in PACKAGES},
        cpu_cores=_cpu_cores(),
        ram_total_gb=total,
        ram_available_gb=available,
        disk_free_gb=shutil.disk_usage(REPO_DIR).free / _GIB,
        cuda_available=cuda,
        gpus=gpus,
        cuda_version=cuda_version,
        bf16_supported=bf16,
    )
    if probes:
        rep.probes = {name: fn() for name, fn in PROBES.items()}
    return rep


def verdict(rep: EnvReport) -> Verdict:
    """Pick the profile for this machine and say what will be skipped and why.

    ``gpu`` (real InternVL2-2B) needs a CUDA GPU with at least
    :data:`GPU_PROFILE_MIN_GB` GiB; everything else runs the ``tiny`` profile.
    Failed probes become one-sentence entries in ``skipped`` (a fallback
    exists) or ``blockers`` (training cannot run).

    >>> cpu = EnvReport("3.11", "Linux", {}, 2, 8.0, 6.0, 50.0, cuda_available=False,
    ...                 probes={"lmdeploy": Probe(False, "no GPU.")})
    >>> verdict(cpu).profile
    'tiny'
    """
    if rep.cuda_available and rep.max_gpu_memory_gb >= COURSE_RECIPE_MIN_GB:
        profile = "gpu"
        reason = f"a CUDA GPU with {rep.max_gpu_memory_gb:.1f} GiB is enough for InternVL2-2B QLoRA."
    elif rep.cuda_available and rep.max_gpu_memory_gb >= GPU_PROFILE_MIN_GB:
        profile = "gpu"
        reason = (
            f"a CUDA GPU with {rep.max_gpu_memory_gb:.1f} GiB fits InternVL2-2B QLoRA with "
            "params/gpu-internvl2-2b-fast.yaml (the course's own batch 4 x 4 needs about "
            f"{COURSE_RECIPE_MIN_GB:.0f} GB on CLoT's 13-tile images)."
        )
    elif rep.cuda_available and rep.max_gpu_memory_gb >= SMALL_GPU_MIN_GB:
        profile = "tiny"
        reason = (
            f"the largest GPU has {rep.max_gpu_memory_gb:.1f} GiB, less than the {GPU_PROFILE_MIN_GB:.1f} GiB "
            "the gpu profile's settings need, so the tiny model is used by default; InternVL2-2B QLoRA still "
            "fits at batch 1 x 16 (the 12 GB row of the guide 'Reproduce the course on one GPU')."
        )
    elif rep.cuda_available:
        profile = "tiny"
        reason = (
            f"the largest GPU has {rep.max_gpu_memory_gb:.1f} GiB, less than the "
            f"{SMALL_GPU_MIN_GB:.1f} GiB InternVL2-2B QLoRA needs at its smallest setting, so the tiny model is used."
        )
    else:
        profile = "tiny"
        reason = "there is no CUDA GPU, so the book runs the tiny CPU-sized model."

    skipped, blockers = [], []
    p = rep.probes
    if "bnb_4bit" in p and not p["bnb_4bit"].ok:
        blockers.append(
            "4-bit quantisation: bitsandbytes cannot run NF4 here, so QLoRA training stops before it starts; "
            "install bitsandbytes 0.50.2, or set quantization_llm to false for plain LoRA (more memory)."
        )
    if "flash_attn" in p and not p["flash_attn"].ok:
        skipped.append(
            "FlashAttention 2: "
            + p["flash_attn"].reason.rstrip(".")
            + "; the model uses eager attention (slower, more memory)."
        )
    if "lmdeploy" in p and not p["lmdeploy"].ok:
        why = "no CUDA GPU here" if not rep.cuda_available else p["lmdeploy"].reason.rstrip(".")
        skipped.append(f"LMDeploy: {why}; inference uses the transformers backend.")
    if "xtuner" in p and not p["xtuner"].ok:
        blockers.append(
            "XTuner: " + p["xtuner"].reason.rstrip(".") + "; the training notebooks cannot run until it imports."
        )
    if rep.versions.get("torch") is None:
        blockers.append("PyTorch is not installed; nothing in the book can run without it.")
    return Verdict(profile=profile, reason=reason, skipped=skipped, blockers=blockers)


def pins(rep: EnvReport) -> Table:
    """Compare the installed versions with the book's pins: package, pin, installed, status, why.

    The pins come from the requirement files (:func:`book_pins`), the reasons from :data:`PINS` and
    :data:`NOT_HERE`. Status is ``ok``, ``differs``, ``missing``, ``unknown`` (no requirement files
    here) or ``not here`` (for packages kept out of this environment on purpose). A differing torch is
    expected on a GPU machine that brings its own torch/torchvision pair; what matters is that the pair
    imports together (the ``xtuner`` probe checks that).
    """
    book = book_pins()
    rows = []
    for name, why in {**PINS, **NOT_HERE}.items():
        installed = rep.versions.get(name) if name in rep.versions else package_version(name)
        pin = None if name in NOT_HERE else book.get(name)
        if name in NOT_HERE:
            status = "not here" if installed is None else "installed"
        elif pin is None:
            status = "unknown"
        elif installed is None:
            status = "missing"
        else:
            status = "ok" if installed == pin else "differs"
        rows.append((name, pin or "-", installed or "-", status, why))
    return Table(("Package", "Book pin", "Installed", "Status", "Why it matters"), rows, "Pinned versions")


# --------------------------------------------------------------------------- env.json


def save(output_dir: str | Path, rep: EnvReport, verd: Verdict) -> Path:
    """Write ``<output_dir>/env.json`` (report + verdict) for the later notebooks; return its path."""
    path = repo_path(output_dir) / "env.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "report": rep.to_dict(),
        "verdict": verd.to_dict(),
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def load(output_dir: str | Path) -> dict[str, Any]:
    """Read ``<output_dir>/env.json`` written by notebook 00; a clear error if it is missing.

    >>> load("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    helpers.errors.MissingOutputError: /nonexistent/env.json is missing: run notebook 00 ...
    """
    path = require(repo_path(output_dir) / "env.json", "00")
    return json.loads(path.read_text(encoding="utf-8"))


def require(previous_output: str | Path, notebook: str) -> Path:
    """Return ``previous_output`` if it exists; else say which notebook writes it.

    The notebooks build on each other: 04 trains with the config 03 wrote,
    06 converts 04's checkpoint, and so on. Each checks what it reads with
    this one call, which raises :class:`~helpers.errors.MissingOutputError`
    naming the missing path and the notebook (``notebook``: its number, e.g.
    ``"03"``) to run first, with the runner's command for it.

    >>> require("/nonexistent/qlora/config.py", "03")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    helpers.errors.MissingOutputError: /nonexistent/qlora/config.py is missing: run notebook 03 ...
    """
    path = repo_path(previous_output)
    if path.exists():
        return path
    from helpers import book

    writer = book.select(book.discover(), only=notebook)[0]
    raise MissingOutputError(
        f"{path} is missing: run notebook {notebook} ({book.title(writer)}, notebooks/{writer.name}) first, "
        f"e.g. `python -m helpers.book run --only {notebook}` with the same output_dir."
    )


# --------------------------------------------------------------------------- common parameters


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is there, else ``"cpu"``; ``"cuda"`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProfileError(
            f"device={device!r} was asked for but this machine has no CUDA GPU: "
            "use device='auto' or 'cpu' (and the tiny profile)."
        )
    return device


@dataclass(frozen=True)
class Session:
    """The common parameters of a notebook, resolved: what :func:`setup` returns."""

    profile: str
    device: str
    seed: int
    output_dir: Path

    def __str__(self) -> str:
        return f"profile={self.profile}  device={self.device}  seed={self.seed}  output_dir={self.output_dir}"


def setup(
    profile: str, device: str = "auto", seed: int = 0, output_dir: str | Path = "_build/outputs", verbose: bool = True
) -> Session:
    """Resolve the common parameters every notebook defines, seed all RNGs and print one line.

    Call it right after the ``parameters`` cell. ``output_dir`` is created.

    >>> s = setup("tiny", device="cpu", seed=0, output_dir="_build/outputs", verbose=False)
    >>> s.device, s.output_dir.name
    ('cpu', 'outputs')
    """
    if profile not in ("tiny", "gpu"):
        raise ProfileError(f"profile={profile!r} is unknown: use 'tiny' or 'gpu'.")
    dev = resolve_device(device)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)
    out = repo_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    session = Session(profile=profile, device=dev, seed=seed, output_dir=out)
    if verbose:
        print(session)
    return session


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.env [--no-probes] [--json]``: print the report and the verdict."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.env", description=__doc__.splitlines()[0])
    parser.add_argument("--no-probes", action="store_true", help="skip the capability probes (fast)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    rep = report(probes=not args.no_probes)
    verd = verdict(rep)
    if args.json:
        print(json.dumps({"report": rep.to_dict(), "verdict": verd.to_dict()}, indent=2))
    else:
        print(rep)
        print(verd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
