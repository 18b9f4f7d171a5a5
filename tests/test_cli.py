"""Every command-line tool of helpers/ follows one rule (see helpers.errors).

An input it cannot use (a missing path, an unknown name, a bad flag) ends with exit status 2 and one
``error: ...`` message on stderr, without a traceback and without an error on stdout; a run or check
that failed ends with exit status 1, its message also on stderr. The tools are discovered (every module
of helpers/ with a top-level ``main``), so a new tool without a case below fails
:func:`test_every_cli_has_cases`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PACKAGE_DIR, REPO_DIR, SAMPLE_DATA_DIR

MISSING = "/nonexistent/book-cli-test"

#: module -> argument lists that are unusable input (exit status 2). ``{tmp}`` is a fresh temporary folder.
BAD_INPUT: dict[str, list[list[str]]] = {
    "helpers.book": [
        ["run", "--only", "99"],
        ["run", "--params-file", f"{MISSING}.yaml"],
        ["strip", f"{MISSING}.ipynb"],
        ["--bogus"],
    ],
    "helpers.site": [["check", "--html", MISSING], ["build", "--bogus"]],
    "helpers.data": [["validate", MISSING], ["validate", str(SAMPLE_DATA_DIR), "--model", MISSING]],
    "helpers.infer": [["--model", MISSING, "--image", "x.png"], ["--image", "x.png"]],
    "helpers.tiny": [["--out", "{tmp}"]],  # a non-empty folder, not overwritten without --overwrite
    # a model folder that is not InternVL2 (no config.json), one that does not exist, a bad port
    "helpers.demo": [["--base", "{tmp}"], ["--base", MISSING], ["--base", "{tmp}", "--port", "x"]],
    "helpers.env": [["--bogus"]],
    # runs in ms-swift's environment (.venv-swift); without its four arguments argparse stops first
    "helpers.swift_chat": [[]],
    # XTuner's own argument parser, after the launcher's preparation (slow: imports xtuner)
    "helpers.xtuner_launch": [[]],
}


def cli_modules() -> list[str]:
    """``helpers.<name>`` for every module of the package that defines a top-level ``main``."""
    found = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.append(f"helpers.{path.stem}")
    return found


def run_cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_every_cli_has_cases() -> None:
    modules = cli_modules()
    assert {"helpers.book", "helpers.site", "helpers.data", "helpers.infer", "helpers.env"} <= set(modules)
    missing = sorted(set(modules) - set(BAD_INPUT))
    assert not missing, f"command-line tools without a bad-input case in tests/test_cli.py: {missing}"
    assert not set(BAD_INPUT) - set(modules), "cases for a module that has no main() any more"


@pytest.mark.parametrize(
    "module,args",
    [(m, a) for m, cases in BAD_INPUT.items() for a in cases],
    ids=lambda v: v if isinstance(v, str) else " ".join(v) or "(no arguments)",
)
def test_bad_input_exits_2_with_the_message_on_stderr(module: str, args: list[str], tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = run_cli(module, [a.replace("{tmp}", str(tmp_path)) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "error:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error" not in proc.stdout.lower(), proc.stdout
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_failed_notebook_run_exits_1(tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nbformat.write(
        new_notebook(cells=[new_code_cell("raise ValueError('broken on purpose')")]), str(nbs / "00_broken.ipynb")
    )
    proc = run_cli(
        "helpers.book", ["run", "--notebooks-dir", str(nbs), "--build-dir", str(tmp_path / "b")], cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: Notebook 00_broken failed." in proc.stderr and "ValueError: broken on purpose" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_site_check_exits_1(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<a href="gone.html">a page that is not there</a>', encoding="utf-8")
    proc = run_cli("helpers.site", ["check", "--html", str(tmp_path), "--no-browser"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "gone.html" in proc.stdout and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- one error family

#: Built-in exceptions helpers/ may still raise, and why: not a learner's problem to fix.
ALLOWED_BUILTIN_RAISES = {
    ("compat.py", "RuntimeError"): "stands in for transformers' own check, whose callers expect RuntimeError",
    ("infer.py", "NotImplementedError"): "abstract methods of Pipeline",
}


def test_helpers_raise_book_errors_only() -> None:
    """Every exception raised on purpose in helpers/ is a BookError, so a learner gets a message, not a bug.

    ``helpers/remote_code/`` is InternVL2's own model code, copied into model folders as it is: not checked.
    """
    import builtins

    found = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = exc.id if isinstance(exc, ast.Name) else None
                if (
                    name
                    and isinstance(getattr(builtins, name, None), type)
                    and issubclass(getattr(builtins, name), BaseException)
                    and (path.name, name) not in ALLOWED_BUILTIN_RAISES
                ):
                    found.append(f"{path.relative_to(REPO_DIR)}:{node.lineno} raises {name}")
    # `raise SystemExit(main())` only hands main's exit status to the interpreter
    found = [f for f in found if not f.endswith("raises SystemExit")]
    assert not found, found


def test_infer_errors_are_the_book_errors() -> None:
    from helpers import errors, infer, tiling

    for name in ("InferenceError", "ImageError", "PromptError", "SessionLengthError", "BackendError"):
        assert getattr(infer, name) is getattr(errors, name)
        assert issubclass(getattr(errors, name), errors.BookError)
    assert issubclass(errors.BackendError, errors.ProfileError)
    with pytest.raises(errors.BookError):
        tiling.plan_tiles(0, 10)
    with pytest.raises(ValueError, match="positive"):  # still a ValueError for maths code that expects one
        tiling.plan_tiles(10, -1)
