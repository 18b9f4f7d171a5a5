"""Run the book's notebooks in order with papermill, one parameter set for all.

::

    python -m helpers.book run                      # every notebook, tiny profile (CPU)
    python -m helpers.book run --profile gpu        # real InternVL2-2B (CUDA, >= 16 GB)
    python -m helpers.book run --only 00,01 -p max_steps 20
    python -m helpers.book run --from 02 --params-file my.yaml
    python -m helpers.book list                     # notebooks and their parameters
    python -m helpers.book strip [--check] [paths]  # remove outputs (CI: --check)

Parameters are the profile's defaults (``params/tiny.yaml`` or
``params/gpu-internvl2-2b.yaml``), then ``--params-file``, then ``-p KEY VALUE``
(later wins; values are YAML scalars, so ``-p max_steps 20`` is an int). The
same order picks the profile: ``-p profile gpu`` or a params file saying
``profile: gpu`` selects the gpu defaults even after ``--profile tiny``. A
notebook only receives the parameters its ``parameters``-tagged cell assigns,
so one file serves every notebook. String values may refer to other
parameters as ``${name}``; relative values of keys ending in ``_path``,
``_dir`` or ``_file`` are resolved against the repository root.

Executed notebooks go to ``_build/notebooks/`` (same file names) with
``run-summary.json``; what a kernel process printed outside its cells (rare:
crashes, ipykernel's own shutdown messages) is kept beside its notebook as
``NN_name.kernel.log``. The first failing notebook stops the run with its cell,
the error and where the executed notebook (and any kernel log) is; the exit
status is then 1.
Input that cannot be used (an unknown notebook, a missing parameters file,
a profile this machine cannot run) is reported on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import math
import os
import re
import string
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import REPO_DIR
from helpers.errors import BookError, ProfileError, RunError, UsageError, report

__all__ = [
    "NOTEBOOKS_DIR",
    "PARAMS_DIR",
    "BUILD_DIR",
    "PROFILES",
    "COMMON_PARAMETERS",
    "NotebookResult",
    "discover",
    "select",
    "title",
    "parameter_names",
    "parameter_defaults",
    "load_params",
    "parse_value",
    "resolve_params",
    "ensure_kernel",
    "SERVING_NOTEBOOKS",
    "SERVING_KERNEL",
    "kernel_exists",
    "choose_kernels",
    "execute",
    "run_book",
    "strip_notebook",
    "strip",
    "main",
]

NOTEBOOKS_DIR = REPO_DIR / "notebooks"
PARAMS_DIR = REPO_DIR / "params"
BUILD_DIR = REPO_DIR / "_build" / "notebooks"
SUMMARY_NAME = "run-summary.json"

#: Profile name -> its defaults file in ``params/``.
PROFILES: dict[str, str] = {"tiny": "tiny.yaml", "gpu": "gpu-internvl2-2b.yaml"}

#: Parameters every notebook's ``parameters`` cell defines.
COMMON_PARAMETERS: tuple[str, ...] = ("profile", "model_path", "data_path", "output_dir", "device", "seed")

_NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")
_PATH_KEY_RE = re.compile(r"_(path|dir|file)$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


# --------------------------------------------------------------------------- notebooks


def discover(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The book's notebooks, ``NN_name.ipynb``, in order.

    >>> [p.name for p in discover()][:1]  # doctest: +SKIP
    ['00_environment.ipynb']
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise UsageError(
            f"Notebook folder {folder} does not exist: pass --notebooks-dir with the folder "
            "that holds the NN_name.ipynb notebooks."
        )
    return sorted(p for p in folder.iterdir() if _NOTEBOOK_RE.match(p.name))


def select(notebooks: Sequence[Path], only: str | None = None, start: str | None = None) -> list[Path]:
    """Keep the notebooks named by ``only`` ("00,01" or stems) from ``start`` on ("02").

    A key matches a notebook whose stem equals it or starts with ``key + "_"``.
    """

    def find(key: str) -> int:
        key = key.strip().removesuffix(".ipynb")
        for i, nb in enumerate(notebooks):
            if nb.stem == key or nb.stem.startswith(key + "_"):
                return i
        names = ", ".join(nb.stem for nb in notebooks) or "none"
        raise UsageError(f"No notebook matches {key!r}; the notebooks are: {names}.")

    chosen = list(notebooks)
    if start:
        chosen = chosen[find(start) :]
    if only:
        keep = {find(k) for k in only.split(",") if k.strip()}
        chosen = [nb for nb in chosen if notebooks.index(nb) in keep]
    return chosen


def _read(path: Path) -> Any:
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:
        raise UsageError(f"{path} is not a readable notebook ({type(exc).__name__}: {exc}).") from exc


def _parameters_cell(nb: Any) -> tuple[int, Any] | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return i, cell
    return None


def title(notebook: str | Path) -> str:
    """The notebook's title: its first ``# heading``, up to a colon (the file's stem if it has none).

    >>> title(NOTEBOOKS_DIR / "03_qlora_config.ipynb")
    'QLoRA config'
    """
    for cell in _read(Path(notebook)).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].split(":")[0].strip()
    return Path(notebook).stem


def _parameters_tree(notebook: str | Path | Any) -> ast.Module | None:
    """The ``parameters`` cell parsed with :mod:`ast`, IPython magics (``%``/``!`` lines) blanked; None if none."""
    nb = _read(Path(notebook)) if isinstance(notebook, (str, Path)) else notebook
    found = _parameters_cell(nb)
    if found is None:
        return None
    source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in found[1].source.splitlines())
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise UsageError(
            f"The parameters cell of {getattr(notebook, 'name', 'the notebook')} is not valid "
            f"Python (line {exc.lineno}: {exc.msg}); fix it in Jupyter."
        ) from exc


def parameter_names(notebook: str | Path | Any) -> list[str]:
    """Names assigned in the notebook's ``parameters``-tagged cell, in order ([] if none).

    The cell is parsed with :mod:`ast`, so ``a = b = 1``, ``x: int = 2`` and
    ``x, y = 1, 2`` all count; IPython magics (``%`` / ``!`` lines) are ignored.
    """
    tree = _parameters_tree(notebook)
    if tree is None:
        return []

    names: list[str] = []

    def add(target: ast.expr) -> None:
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                add(elt)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                add(target)
        elif isinstance(node, ast.AnnAssign):
            add(node.target)
    return names


# --------------------------------------------------------------------------- parameters


def parameter_defaults(notebook: str | Path) -> dict[str, Any]:
    """The values the ``parameters`` cell assigns, where they are literals (``x = 1``, ``y: str = "a"``).

    Names assigned something else (an expression, a tuple unpacking) are left out.
    """
    tree = _parameters_tree(notebook)
    out: dict[str, Any] = {}
    for node in tree.body if tree is not None else []:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        if isinstance(target, ast.Name) and node.value is not None:
            try:
                out[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def parse_value(text: str) -> Any:
    """Parse a ``-p`` value as a YAML scalar: ``20`` -> 20, ``true`` -> True, ``null`` -> None.

    PyYAML reads ``1e-4`` as a string; numbers like it become floats here.

    >>> parse_value("20"), parse_value("1e-4"), parse_value("cpu"), parse_value("null")
    (20, 0.0001, 'cpu', None)
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if value is not None and not isinstance(value, (bool, int, float, list, dict)):
        return text  # dates and other YAML types stay as written
    return value


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of parameters (comments allowed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        files = ", ".join(sorted(p.name for p in PARAMS_DIR.glob("*.yaml"))) or "none"
        raise UsageError(
            f"Parameters file {path} does not exist. Fix: pass one of the files in "
            f"{PARAMS_DIR} ({files}), e.g. --params-file params/gpu-internvl2-2b.yaml, or write your own."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"Parameters file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UsageError(f"Parameters file {path} must be a mapping of names to values (key: value lines).")
    return data


def resolve_params(params: dict[str, Any], root: Path = REPO_DIR) -> dict[str, Any]:
    """Expand ``${name}`` references and make path-like values absolute.

    Keys ending in ``_path``, ``_dir`` or ``_file`` with a relative string value
    are resolved against ``root`` (the repository), because notebooks run with
    their own folder as working directory.

    >>> resolve_params({"output_dir": "out", "model_path": "${output_dir}/m"}, Path("/r"))
    {'output_dir': '/r/out', 'model_path': '/r/out/m'}
    """
    out = dict(params)
    for _ in range(5):  # references to references, a few levels deep
        changed = False
        for key, value in out.items():
            if isinstance(value, str) and "$" in value:
                new = string.Template(value).safe_substitute({k: v for k, v in out.items() if k != key})
                changed |= new != value
                out[key] = new
        if not changed:
            break
    for key, value in out.items():
        if isinstance(value, str) and value and _PATH_KEY_RE.search(key) and "://" not in value:
            p = Path(value).expanduser()
            out[key] = str(p if p.is_absolute() else (root / p).resolve())
    return out


def _merge_params(
    profile: str, params_file: str | Path | None, overrides: Iterable[tuple[str, str]], params_dir: Path
) -> tuple[dict[str, Any], set[str]]:
    """Profile defaults, then the params file, then ``-p``; also the keys the user supplied.

    A ``profile`` key in the params file or in ``-p`` is later than ``--profile``
    and so wins: it selects which defaults file is loaded.
    """
    user: dict[str, Any] = {}
    if params_file:
        user.update(load_params(params_file))
    user.update({key: parse_value(value) for key, value in overrides})
    profile = user.pop("profile", profile)
    if profile not in PROFILES:
        raise ProfileError(f"Unknown profile {profile!r}: use one of {', '.join(PROFILES)}.")
    params = load_params(params_dir / PROFILES[profile])
    params.update(user)
    params["profile"] = profile
    return params, set(user)


# --------------------------------------------------------------------------- kernel


def ensure_kernel(name: str = "python3") -> None:
    """Make sure a Jupyter kernelspec ``name`` exists; install ``python3`` for this interpreter if not.

    The ``python3`` kernelspec that ipykernel provides starts ``python``, which
    jupyter_client replaces by the interpreter running the runner, so the
    notebooks see the same packages as ``python -m helpers.book``.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as exc:
        raise RunError("jupyter_client is missing: pip install papermill ipykernel.") from exc
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        if name != "python3":
            raise UsageError(
                f"There is no Jupyter kernel named {name!r}: see `jupyter kernelspec list`, "
                "or leave out --kernel to use python3."
            ) from None
        try:
            from ipykernel.kernelspec import install
        except ImportError as exc:
            raise RunError("ipykernel is missing, so notebooks cannot run: pip install ipykernel.") from exc
        install(prefix=sys.prefix)
        print(f"installed the python3 kernel for {sys.executable} in {sys.prefix}")
        return
    exe = spec.argv[0] if spec.argv else ""
    if os.path.isabs(exe) and Path(exe).resolve() != Path(sys.executable).resolve():
        print(
            f"note: kernel {name!r} runs {exe}, not {sys.executable}; if imports fail in the notebooks, "
            f"run `{sys.executable} -m ipykernel install --sys-prefix`.",
            file=sys.stderr,
        )


#: Notebooks that answer with the ``backend`` parameter. On a CUDA GPU, with ``backend`` ``lmdeploy`` or
#: ``auto``, the runner executes them in the serving environment's kernel, where LMDeploy is installed.
SERVING_NOTEBOOKS = ("02", "07")
#: The kernel ``make gpu-env`` (``tools/install.sh --gpu``) registers for the LMDeploy serving environment
#: (``.venv-serve``): LMDeploy 0.18 needs transformers >= 4.56, XTuner 0.2.0 pins 4.48, so they live apart.
SERVING_KERNEL = "book-serve"


def kernel_exists(name: str) -> bool:
    """Whether Jupyter knows a kernelspec ``name`` (``jupyter kernelspec list``)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return False
    return True


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_kernels(
    plan: _Plan, kernel: str = "python3", serving_kernel: str | None = SERVING_KERNEL
) -> dict[Path, tuple[str, str]]:
    """Pick each notebook's kernel, with the reason: the serving kernel for 02/07 when LMDeploy can answer.

    A notebook of :data:`SERVING_NOTEBOOKS` runs in ``serving_kernel`` when its
    ``backend`` is ``lmdeploy`` or ``auto``, its ``device`` is not ``cpu``, a
    CUDA GPU is present and the kernel exists. ``backend='lmdeploy'`` without
    a GPU or without the kernel is a :class:`UsageError` before anything runs.
    ``serving_kernel=None`` (``--serving-kernel none``) keeps every notebook in
    ``kernel``. Other notebooks always run in ``kernel``.
    """
    chosen: dict[Path, tuple[str, str]] = {}
    cuda: bool | None = None
    for nb in plan.notebooks:
        params = {**parameter_defaults(nb), **plan.inject[nb]}
        if nb.stem[:2] not in SERVING_NOTEBOOKS or "backend" not in params:
            chosen[nb] = (kernel, "")
            continue
        backend, device = params.get("backend", "auto"), str(params.get("device", "auto"))
        if backend == "transformers":
            chosen[nb] = (kernel, "backend=transformers")
            continue
        if serving_kernel is None:
            why = "--serving-kernel none"
        elif device == "cpu":
            why = "device=cpu: LMDeploy needs a CUDA GPU"
        else:
            cuda = _cuda_available() if cuda is None else cuda
            if not cuda:
                why = "no CUDA GPU here: LMDeploy needs one"
            elif not kernel_exists(serving_kernel):
                why = f"no {serving_kernel!r} kernel: `make gpu-env` creates the LMDeploy serving environment"
            else:
                chosen[nb] = (serving_kernel, f"backend={backend} on a CUDA GPU: LMDeploy's serving environment")
                continue
        if backend == "lmdeploy":
            raise UsageError(
                f"{nb.stem} asks for backend='lmdeploy', but {why}. Fix: on a CUDA machine run `make gpu-env` "
                f"(it creates .venv-serve and registers the {SERVING_KERNEL!r} kernel), or use "
                "-p backend transformers (or auto). No notebook was run."
            )
        chosen[nb] = (kernel, f"backend=auto; transformers answers, {why}")
    return chosen


def _kernel_manager(name: str, socket_dir: Path) -> Any:
    """A kernel manager talking to the kernel over local sockets (IPC) where the OS has them.

    Over TCP, ipykernel >= 7 warns at every start that the traffic is not encrypted;
    IPC sockets are files only this user can reach, and the warning goes away. The
    socket files go to ``socket_dir`` (an absolute path: a relative one would land
    in the notebook's folder).
    """
    from jupyter_client.manager import KernelManager

    if os.name != "posix":
        return KernelManager(kernel_name=name)
    return KernelManager(kernel_name=name, transport="ipc", ip=str(socket_dir / "kernel"))


_KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]  # as nbclient starts kernels: no history database


def kernel_log(out: str | Path) -> Path:
    """Where :func:`execute` keeps the kernel process's own output for the executed notebook ``out``.

    Cell outputs are in the notebook; this file holds what the kernel process
    itself printed outside any cell. It is removed when empty.

    >>> kernel_log("_build/nb/03_train.ipynb")
    PosixPath('_build/nb/03_train.kernel.log')
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.kernel.log")


def _shutdown(km: Any) -> None:
    """Stop the kernel of one notebook: nbclient leaves a kernel manager it was given running."""
    try:
        if km.has_kernel:
            km.shutdown_kernel()
    finally:
        km.cleanup_resources()


def _ensure_metadata(nb: Any) -> list[str]:
    """Add kernelspec / language_info when missing (papermill needs them); return what was added."""
    added = []
    if not nb.metadata.get("kernelspec"):
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        added.append("kernelspec")
    if not nb.metadata.get("language_info", {}).get("name"):
        nb.metadata["language_info"] = dict(LANGUAGE_INFO)
        added.append("language_info")
    return added


@contextmanager
def _pythonpath(path: Path) -> Iterator[None]:
    """Let the kernels import ``helpers`` whatever their working directory."""
    old = os.environ.get("PYTHONPATH")
    parts = [str(path)] + ([old] if old else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


# --------------------------------------------------------------------------- run


@dataclass
class NotebookResult:
    """One line of ``run-summary.json``."""

    notebook: str
    status: str  # "ok", "failed" or "not run"
    seconds: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    error: str | None = None
    kernel: str | None = None
    started: float | None = None  # time.time() when the notebook started (lines up with GPU memory logs)
    peak_memory_mb: float | None = None  # kernel + child processes, see PeakMemory


def _write_summary(build_dir: Path, profile: str, results: list[NotebookResult], unused: list[str]) -> Path:
    path = build_dir / SUMMARY_NAME
    data = {
        "profile": profile,
        "python": sys.executable,
        "total_seconds": round(sum(r.seconds or 0.0 for r in results), 2),
        "unused_parameters": unused,
        "notebooks": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _table(results: list[NotebookResult]) -> str:
    width = max([len(r.notebook) for r in results] + [len("notebook")])
    lines = [f"{'notebook':<{width}}  {'status':<8} {'seconds':>8} {'peak MB':>8}"]
    for r in results:
        secs = f"{r.seconds:8.1f}" if r.seconds is not None else f"{'-':>8}"
        peak = f"{r.peak_memory_mb:8.0f}" if r.peak_memory_mb is not None else f"{'-':>8}"
        lines.append(f"{r.notebook:<{width}}  {r.status:<8} {secs} {peak}")
    lines.append(f"{'total':<{width}}  {'':<8} {sum(r.seconds or 0 for r in results):8.1f}")
    return "\n".join(lines)


def _failure_message(nb_path: Path, out_path: Path, exc: Exception, shift: int, param_index: int | None) -> str:
    from papermill.exceptions import PapermillExecutionError

    lines = [f"Notebook {nb_path.stem} failed."]
    if isinstance(exc, PapermillExecutionError):
        index = exc.cell_index
        if shift and param_index is not None and index > param_index:
            index -= shift  # papermill added an "injected-parameters" cell after the parameters cell
        lines.append(f"  cell {index + 1} of {nb_path.name} (In [{exc.exec_count}]) raised {exc.ename}: {exc.evalue}")
        source = exc.source.strip("\n").splitlines()
        lines.append("  cell source:")
        lines += [f"    | {line}" for line in source[:6]]
        if len(source) > 6:
            lines.append(f"    | ... ({len(source) - 6} more lines)")
    else:
        lines.append(f"  {type(exc).__name__}: {str(exc).strip() or 'no message'}")
    if out_path.is_file():
        lines.append(f"  executed notebook (with the error): {out_path}")
    else:
        lines.append(f"  no executed notebook was written ({out_path})")
    return "\n".join(lines)


class PeakMemory:
    """The peak memory of a process and all its descendants, sampled in a background thread.

    The kernel of a notebook starts training runs, servers and data workers as child processes; their
    memory is summed every ``interval`` seconds and the largest sum is kept in :attr:`peak_mb`. On Linux
    each process counts its proportional set size (PSS: a page shared by n processes, such as torch's
    libraries or a forked worker's copy-on-write memory, counts 1/n in each), so the sum is the memory
    the tree really holds; elsewhere the resident set size (RSS), which counts shared pages once per
    process (:attr:`measure` says which). A spike shorter than ``interval`` can be missed. Without
    psutil, or without a pid, :attr:`peak_mb` stays ``None``.

    >>> import os, time
    >>> with PeakMemory(os.getpid(), interval=0.05) as mem:
    ...     time.sleep(0.2)
    >>> mem.peak_mb > 10
    True
    """

    def __init__(self, pid: int | None, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.peak_mb: float | None = None
        self.measure = "pss" if sys.platform.startswith("linux") else "rss"
        self._stop: Any = None
        self._thread: Any = None

    def _sample(self, root: Any) -> None:
        import psutil

        while True:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return  # the process has ended
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):  # a child that just ended
                    total += proc.memory_full_info().pss if self.measure == "pss" else proc.memory_info().rss
            self.peak_mb = max(self.peak_mb or 0.0, total / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        import threading

        try:
            import psutil

            root = psutil.Process(self.pid) if self.pid else None
        except Exception:  # psutil missing, or the process already gone
            root = None
        if root is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, args=(root,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.peak_mb is not None:
            self.peak_mb = round(self.peak_mb, 1)


def peak_memory_mb(executed: str | Path) -> float | None:
    """The peak memory :func:`execute` recorded in an executed notebook's metadata (``book.peak_memory_mb``)."""
    try:
        meta = json.loads(Path(executed).read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return None
    return (meta.get("book") or {}).get("peak_memory_mb")


def _record_peak(executed: Path, memory: PeakMemory) -> None:
    """Write the peak memory into the executed notebook's metadata (the file papermill wrote)."""
    if memory.peak_mb is None or not executed.is_file():
        return
    nb = json.loads(executed.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {})["book"] = {
        "peak_memory_mb": memory.peak_mb,
        "peak_memory_note": f"kernel + child processes, sum of {memory.measure.upper()} sampled every "
        f"{memory.interval:g} s",
    }
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def execute(
    notebook: str | Path,
    out: str | Path,
    params: dict[str, Any] | None = None,
    kernel: str = "python3",
    *,
    log_output: bool = False,
    cell_timeout: int | None = None,
) -> Path:
    """Run one notebook with papermill into ``out``; the one way the book executes a notebook.

    The notebook runs in a fresh ``kernel`` (over local sockets, stopped
    afterwards) with its own folder as working directory and the repository
    first on ``PYTHONPATH``, so ``import helpers`` works wherever it lives.
    ``params`` are injected after its ``parameters`` cell. Notebooks without
    ``kernelspec``/``language_info`` metadata run too (kernel and language are
    given). A failure raises :class:`RunError` naming the cell (numbered as in
    the source notebook), its error and its first lines, and where the
    executed notebook with the error is. What the kernel process prints outside
    any cell goes to :func:`kernel_log` (kept only when not empty), so it never
    interleaves with the run's own lines. The peak memory of the kernel and
    its child processes (:class:`PeakMemory`) goes into the executed notebook's
    metadata (:func:`peak_memory_mb` reads it). Returns ``out``.

    >>> execute("notebooks/00_environment.ipynb", "_build/nb/00.ipynb", {"seed": 1})  # doctest: +SKIP
    PosixPath('_build/nb/00.ipynb')
    """
    import papermill as pm

    notebook, out, params = Path(notebook), Path(out), dict(params or {})
    found = _parameters_cell(_read(notebook))
    out.parent.mkdir(parents=True, exist_ok=True)
    log = kernel_log(out)
    failure: Exception | None = None
    memory = PeakMemory(None)  # its pid is the kernel's, once started
    with _pythonpath(REPO_DIR), tempfile.TemporaryDirectory(prefix="book-kernel-") as sockets, log.open("w") as sink:
        km = _kernel_manager(kernel, Path(sockets))
        try:
            # Started here, not by nbclient, so that the kernel process's own stdout/stderr
            # (its log: start-up, crashes, shutdown races) go to a file, not between our lines.
            km.start_kernel(cwd=str(notebook.parent), stdout=sink, stderr=sink, extra_arguments=_KERNEL_ARGS)
            memory.pid = getattr(km.provisioner, "pid", None)
            with memory:
                pm.execute_notebook(
                    str(notebook),
                    str(out),
                    parameters=params,
                    kernel_name=kernel,
                    language="python",
                    progress_bar=False,
                    log_output=log_output,
                    cwd=str(notebook.parent),
                    km=km,
                    **({"execution_timeout": cell_timeout} if cell_timeout else {}),
                )
        except Exception as exc:
            failure = exc
        finally:
            _shutdown(km)
    _record_peak(out, memory)
    if log.stat().st_size == 0:
        log.unlink()
    if failure is not None:
        message = _failure_message(
            notebook, out, failure, shift=1 if params else 0, param_index=found[0] if found else None
        )
        if log.is_file():
            message += f"\n  the kernel process's own log: {log}"
        raise RunError(message) from failure
    return out


@dataclass
class _Plan:
    """What a run will do: the notebooks, the parameters each receives, the user's keys no notebook uses."""

    profile: str
    notebooks: list[Path]
    inject: dict[Path, dict[str, Any]]
    unused: list[str]


def _plan(
    profile: str,
    overrides: Iterable[tuple[str, str]],
    params_file: str | Path | None,
    only: str | None,
    start: str | None,
    notebooks_dir: str | Path,
    params_dir: str | Path,
) -> _Plan:
    """Select the notebooks and give each the merged, resolved parameters its ``parameters`` cell assigns."""
    all_notebooks = discover(notebooks_dir)
    notebooks = select(all_notebooks, only, start)
    if not notebooks:
        raise UsageError(f"No notebooks to run in {notebooks_dir}.")
    params, user_keys = _merge_params(profile, params_file, overrides, Path(params_dir))
    profile = params["profile"]
    params = resolve_params(params)
    names = {path: parameter_names(path) for path in all_notebooks}
    known = {name for path_names in names.values() for name in path_names}
    inject = {path: {k: params[k] for k in names[path] if k in params} for path in notebooks}
    return _Plan(profile, notebooks, inject, sorted(user_keys - known))


def check_parameters(plan: _Plan) -> None:
    """Check every value the selected notebooks will receive; raise one :class:`UsageError` listing all problems.

    The rules live in :mod:`helpers.params` (training ones in
    :func:`helpers.config.problems`); nothing has run when this raises.
    """
    from .params import check

    values: dict[str, Any] = {}
    for inject in plan.inject.values():
        values.update(inject)
    found = check(values)
    if found:
        raise UsageError(
            f"{len(found)} parameter problem(s); no notebook was run:\n" + "\n".join(f"  - {p}" for p in found)
        )


def _stream_cell_output() -> None:
    """Let papermill's logger, which carries the cells' output, print to stdout."""
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)


def _error_line(exc: BaseException) -> str:
    """``Name: message`` of the error a notebook raised (``ename``/``evalue`` when raised in a cell)."""
    if hasattr(exc, "ename"):
        return f"{exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}"


def run_book(
    profile: str = "tiny",
    overrides: Iterable[tuple[str, str]] = (),
    params_file: str | Path | None = None,
    only: str | None = None,
    start: str | None = None,
    build_dir: str | Path = BUILD_DIR,
    kernel: str = "python3",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    params_dir: str | Path = PARAMS_DIR,
    log_output: bool = False,
    cell_timeout: int | None = None,
    serving_kernel: str | None = SERVING_KERNEL,
) -> list[NotebookResult]:
    """Execute the selected notebooks in order; raise :class:`RunError` at the first failure.

    Returns one :class:`NotebookResult` per notebook and writes
    ``<build_dir>/run-summary.json`` after each notebook (also on failure).

    >>> run_book(only="00")  # doctest: +SKIP
    [NotebookResult(notebook='00_environment', status='ok', seconds=14.2, ...)]
    """
    plan = _plan(profile, overrides, params_file, only, start, notebooks_dir, params_dir)
    check_parameters(plan)
    if plan.unused:
        print(
            f"warning: no notebook defines {', '.join(plan.unused)} in its parameters cell; "
            "these values are ignored (check the spelling).",
            file=sys.stderr,
        )
    if plan.profile == "gpu":
        _require_cuda()
    ensure_kernel(kernel)
    kernels = choose_kernels(plan, kernel, serving_kernel)
    for nb_path, (name, why) in kernels.items():
        if why:
            print(f"kernel for {nb_path.stem}: {name} ({why})")
    if log_output:
        _stream_cell_output()

    build = Path(build_dir)
    build.mkdir(parents=True, exist_ok=True)
    results = [NotebookResult(nb.stem, "not run") for nb in plan.notebooks]
    print(f"profile {plan.profile}: running {len(results)} notebook(s) into {build}")
    for i, (nb_path, result) in enumerate(zip(plan.notebooks, results), start=1):
        print(f"[{i}/{len(results)}] {nb_path.stem} ...", end="\n" if log_output else " ", flush=True)
        result.params, result.output = plan.inject[nb_path], str(build / nb_path.name)
        result.kernel, result.started = kernels[nb_path][0], round(time.time(), 2)
        t0 = time.perf_counter()
        try:
            execute(
                nb_path, result.output, result.params, result.kernel, log_output=log_output, cell_timeout=cell_timeout
            )
        except RunError as exc:
            result.seconds, result.status = round(time.perf_counter() - t0, 2), "failed"
            result.peak_memory_mb = peak_memory_mb(result.output)
            result.error = _error_line(exc.__cause__ or exc)
            print(f"FAILED {result.seconds:.1f} s", flush=True)
            print("\n" + _table(results))
            summary = _write_summary(build, plan.profile, results, plan.unused)
            not_run = [r.notebook for r in results if r.status == "not run"]
            raise RunError(
                f"{exc}" + (f"\n  not run: {', '.join(not_run)}" if not_run else "") + f"\n  run summary: {summary}"
            ) from exc.__cause__
        result.seconds, result.status = round(time.perf_counter() - t0, 2), "ok"
        result.peak_memory_mb = peak_memory_mb(result.output)
        print(f"ok {result.seconds:.1f} s", flush=True)
        _write_summary(build, plan.profile, results, plan.unused)
    print("\n" + _table(results))
    print(f"executed notebooks and {SUMMARY_NAME} are in {build}")
    return results


TRAINING_NOTEBOOKS = "03,04"  # config + training: what a sweep repeats once per parameter set
PLOT_NOTEBOOK = "05"  # overlays the runs of a sweep


def load_sweep(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r"""Read a sweep file: ``base:`` (parameters of every run) and ``runs:`` (a list with a ``name`` each).

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.yaml"
    >>> _ = f.write_text("base: {max_steps: 8}\nruns:\n  - {name: r8, lora_r: 8}\n  - {name: r64, lora_r: 64}\n")
    >>> load_sweep(f)
    ({'max_steps': 8}, [{'name': 'r8', 'lora_r': 8}, {'name': 'r64', 'lora_r': 64}])
    """
    spec = load_params(path)
    base, runs = spec.get("base") or {}, spec.get("runs")
    if not isinstance(runs, list) or len(runs) < 1 or not all(isinstance(r, dict) for r in runs):
        raise UsageError(f"{path}: a sweep needs `runs:`, a list of parameter sets, each with a `name`.")
    names = [str(r.get("name", "")) for r in runs]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
    if bad or len(set(names)) != len(names):
        raise UsageError(f"{path}: every run needs a unique `name` of letters, digits, '.', '_' or '-' (got {names}).")
    return dict(base), [dict(r) for r in runs]


def run_sweep(
    sweep_file: str | Path,
    profile: str = "tiny",
    overrides: Iterable[tuple[str, str]] = (),
    build_dir: str | Path = BUILD_DIR,
    kernel: str = "python3",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    params_dir: str | Path = PARAMS_DIR,
) -> Path:
    """Run the training notebooks once per parameter set, then overlay the runs with notebook 05.

    Each run writes into ``<output_dir>/sweeps/<sweep>/<run>/`` (its executed
    notebooks into ``<build_dir>/sweeps/<sweep>/<run>/``) and shares the main
    model; notebook 05 is then executed into ``build_dir`` with ``runs_dir``
    pointing at the sweep, and saves the overlaid figure there. Returns the
    sweep's output folder.
    """
    base, runs = load_sweep(sweep_file)
    overrides = list(overrides)
    merged, _ = _merge_params(profile, None, overrides, Path(params_dir))
    resolved = resolve_params(merged)
    stem = Path(sweep_file).stem
    sweep_dir = Path(resolved["output_dir"]) / "sweeps" / stem
    shared = [("model_path", json.dumps(resolved["model_path"])), ("demo_interrupt", "false")]
    for i, run in enumerate(runs, start=1):
        name = run.pop("name")
        values = {**base, **run}
        print(f"=== sweep {stem}: run {i}/{len(runs)} {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        run_overrides = (
            overrides
            + shared
            + [(k, json.dumps(v)) for k, v in values.items()]
            + [("output_dir", json.dumps(str(sweep_dir / name)))]
        )
        run_book(
            profile,
            run_overrides,
            only=TRAINING_NOTEBOOKS,
            build_dir=Path(build_dir) / "sweeps" / stem / name,
            kernel=kernel,
            notebooks_dir=notebooks_dir,
            params_dir=params_dir,
        )
    print(f"=== sweep {stem}: overlaying {len(runs)} runs")
    run_book(
        profile,
        overrides + [("runs_dir", json.dumps(str(sweep_dir)))],
        only=PLOT_NOTEBOOK,
        build_dir=build_dir,
        kernel=kernel,
        notebooks_dir=notebooks_dir,
        params_dir=params_dir,
    )
    return sweep_dir


def _require_cuda() -> None:
    if not _cuda_available():
        raise ProfileError(
            "The gpu profile needs a CUDA GPU and there is none here: "
            "run with the tiny profile (the default), or on the GPU machine."
        )


# --------------------------------------------------------------------------- strip


def strip_notebook(nb: Any) -> list[str]:
    """Remove outputs, execution counts and run metadata in place; return what was removed.

    Also drops papermill's injected-parameters and error-marker cells, and adds
    the ``kernelspec``/``language_info`` metadata papermill needs if missing.
    An empty list means the notebook was already clean.
    """
    found: list[str] = []
    kept = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            found.append("papermill cells")
            continue
        kept.append(cell)
        if cell.cell_type == "code":
            if cell.get("outputs"):
                found.append("outputs")
                cell.outputs = []
            if cell.get("execution_count") is not None:
                found.append("execution counts")
                cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            if key in cell.get("metadata", {}):
                found.append("cell run metadata")
                del cell.metadata[key]
        if "tags" in cell.get("metadata", {}) and not cell.metadata["tags"]:
            del cell.metadata["tags"]
    nb.cells = kept
    for key in ("papermill", "widgets"):
        if key in nb.metadata:
            found.append("notebook run metadata")
            del nb.metadata[key]
    found += [f"missing {m}" for m in _ensure_metadata(nb)]
    return list(dict.fromkeys(found))


def _notebook_paths(paths: Sequence[str | Path], default_dir: Path) -> list[Path]:
    if not paths:
        return sorted(default_dir.glob("*.ipynb"))
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"{p} does not exist.")
    return out


def strip(paths: Sequence[str | Path] = (), check: bool = False, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Strip notebooks in place (or with ``check=True`` only report); return the notebooks that were dirty."""
    import nbformat

    dirty = []
    for path in _notebook_paths(paths, Path(notebooks_dir)):
        nb = _read(path)
        found = strip_notebook(nb)
        if not found:
            continue
        dirty.append(path)
        if check:
            print(f"{path}: {', '.join(found)}")
        else:
            nbformat.write(nb, str(path))
            print(f"stripped {path} ({', '.join(found)})")
    return dirty


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.book",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--notebooks-dir",
        type=Path,
        default=NOTEBOOKS_DIR,
        help="folder with the NN_name.ipynb notebooks (default: notebooks/)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="execute the notebooks in order")
    run.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="tiny",
        help="parameter defaults: tiny (CPU, default) or gpu (InternVL2-2B)",
    )
    run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="set a parameter (YAML scalar), e.g. -p max_steps 20; repeatable",
    )
    run.add_argument("--params-file", type=Path, help="YAML file of parameters (over the profile's)")
    run.add_argument("--only", help="comma-separated notebooks to run, e.g. 00,01")
    run.add_argument("--from", dest="start", help="start at this notebook, e.g. 02")
    run.add_argument(
        "--build-dir", type=Path, default=BUILD_DIR, help="where executed notebooks go (default: _build/notebooks)"
    )
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    run.add_argument(
        "--serving-kernel",
        default=SERVING_KERNEL,
        help=f"kernel for notebooks {'/'.join(SERVING_NOTEBOOKS)} when LMDeploy answers on a GPU "
        f"(default: {SERVING_KERNEL}, made by `make gpu-env`; 'none': always --kernel)",
    )
    run.add_argument("--params-dir", type=Path, default=PARAMS_DIR, help=argparse.SUPPRESS)
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' cell output")
    run.add_argument("--cell-timeout", type=int, help="seconds a single cell may run (default: no limit)")

    sw = sub.add_parser(
        "sweep",
        parents=[common],
        help="run the training notebooks once per parameter set "
        "of a sweep file, then overlay the loss curves (notebook 05)",
    )
    sw.add_argument("sweep_file", type=Path, help="YAML with `base:` and `runs:` (see params/sweep-*.yaml)")
    sw.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    sw.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    sw.add_argument("--build-dir", type=Path, default=BUILD_DIR)
    sw.add_argument("--kernel", default="python3")
    sw.add_argument("--params-dir", type=Path, default=PARAMS_DIR, help=argparse.SUPPRESS)

    sub.add_parser("list", parents=[common], help="list the notebooks and the parameters each defines")

    st = sub.add_parser("strip", parents=[common], help="remove outputs and execution counts from notebooks in place")
    st.add_argument("paths", nargs="*", help="notebooks or folders (default: the notebooks folder)")
    st.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs")
    return parser


def _list(notebooks_dir: Path) -> None:
    for nb in discover(notebooks_dir):
        names = parameter_names(nb)
        missing = [n for n in COMMON_PARAMETERS if n not in names]
        extra = [n for n in names if n not in COMMON_PARAMETERS]
        line = f"{nb.stem:<28} extra parameters: {', '.join(extra) or '-'}"
        if not names:
            line += "   (no parameters cell)"
        elif missing:
            line += f"   (missing common: {', '.join(missing)})"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m helpers.book``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            run_book(
                profile=args.profile,
                overrides=[tuple(p) for p in args.param],
                params_file=args.params_file,
                only=args.only,
                start=args.start,
                build_dir=args.build_dir,
                kernel=args.kernel,
                notebooks_dir=args.notebooks_dir,
                params_dir=args.params_dir,
                log_output=args.log_output,
                cell_timeout=args.cell_timeout,
                serving_kernel=None if args.serving_kernel == "none" else args.serving_kernel,
            )
        elif args.command == "sweep":
            out = run_sweep(
                args.sweep_file,
                profile=args.profile,
                overrides=[tuple(p) for p in args.param],
                build_dir=args.build_dir,
                kernel=args.kernel,
                notebooks_dir=args.notebooks_dir,
                params_dir=args.params_dir,
            )
            print(f"sweep outputs in {out}; overlaid figure: {out / 'loss_curves.png'}")
        elif args.command == "list":
            _list(args.notebooks_dir)
        elif args.command == "strip":
            dirty = strip(args.paths, check=args.check, notebooks_dir=args.notebooks_dir)
            if args.check and dirty:
                print(f"{len(dirty)} notebook(s) carry outputs: run `python -m helpers.book strip`.", file=sys.stderr)
                return 1
    except BookError as exc:
        return report(exc)  # 1 when a notebook failed, 2 when the input cannot be used
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
