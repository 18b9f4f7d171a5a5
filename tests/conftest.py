"""Shared fixtures: one tiny InternVL2 built per test session, and the book executed once, in the background.

The whole book (every notebook on the tiny profile, about 20 minutes on 2 CPU
cores) is the longest part of a test session, and its training uses about one
of CI's two cores (measured: 104% CPU over notebooks 03-04). So when a session
holds tests that read the executed book, the book starts in a process of its
own with the session's first test, the other tests run meanwhile, and the
tests that read the book run last (``pytest_collection_modifyitems``). The
book's runner is started under :mod:`helpers.procgroup`: it and every process
it starts end with the session, even when pytest is killed. (pytest-xdist's
``--dist loadgroup`` would be the usual tool, but it does not group on pytest
9.2, pytest-dev/pytest-xdist#1386: the book would run once per worker.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: fixtures that read the executed book; a test that asks for one through ``request`` carries ``reads_book``
BOOK_FIXTURES = {"executed_book", "built_site"}
_BOOK_NEEDED = pytest.StashKey[bool]()


def _reads_book(item: pytest.Item) -> bool:
    uses = BOOK_FIXTURES & set(getattr(item, "fixturenames", ()))
    return bool(uses) or item.get_closest_marker("reads_book") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that read the executed book go last (a stable sort keeps every other order)."""
    items.sort(key=_reads_book)


def pytest_collection_finish(session: pytest.Session) -> None:
    needed = any(_reads_book(i) for i in session.items)
    session.config.stash[_BOOK_NEEDED] = needed
    if needed:
        _split_threads()


def _split_threads() -> None:
    """Half of the cores for the book, half for the other tests: each process gets ``cores // 2`` threads.

    Two streams of work share the machine while the book runs. With PyTorch's
    default (a thread per core in every process) they oversubscribe it: on
    2 cores a 24-iteration tiny training took as long with 2 threads as with
    1 (34.6 s against 35.8 s) and 23% more CPU time (46.3 s against 37.5 s),
    time the other stream then lacks. ``OMP_NUM_THREADS`` reaches every
    process started from here (the book's kernels and trainings, the layout
    runs); a value set by hand wins.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    threads = str(max(1, cores // 2))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
    if "torch" in sys.modules:  # imported during collection: its pool is already sized
        sys.modules["torch"].set_num_threads(int(threads))


def _start_book(folder: Path) -> subprocess.Popen:
    """``helpers.book run --profile tiny`` into ``folder``, under the watchdog, its output to ``folder/runner.log``."""
    cmd = [sys.executable, "-m", "helpers.book", "run", "--profile", "tiny", "--build-dir", str(folder / "notebooks")]
    cmd += ["-p", "output_dir", str(folder / "outputs")]
    with (folder / "runner.log").open("w") as log:
        watchdog = [sys.executable, "-m", "helpers.procgroup", str(os.getpid()), "--"]
        return subprocess.Popen(watchdog + cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session", autouse=True)
def _book_in_background(request, tmp_path_factory):
    """Start the book with the session's first test when some selected test reads it; end it with the session."""
    if not request.config.stash.get(_BOOK_NEEDED, False):
        yield None
        return
    folder = tmp_path_factory.mktemp("book")
    proc = _start_book(folder)
    yield folder, proc
    if proc.poll() is None:  # the session ended first (a failure, Ctrl-C): the watchdog ends the runner's tree
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="session")
def executed_book(_book_in_background, tmp_path_factory) -> Path:
    """Every notebook run once on the tiny profile through the runner (shared by the notebook and site tests).

    Returns the folder holding ``notebooks/`` (executed copies, ``run-summary.json``) and ``outputs/``.
    """
    if _book_in_background is None:  # asked for by a test that pytest_collection_finish did not know of
        folder = tmp_path_factory.mktemp("book")
        proc = _start_book(folder)
    else:
        folder, proc = _book_in_background
    code = proc.wait()
    log = (folder / "runner.log").read_text(errors="replace")
    print(log[-4000:])
    assert code == 0, f"the runner failed (exit status {code}):\n{log[-6000:]}"
    return folder


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
