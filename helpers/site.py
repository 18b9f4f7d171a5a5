"""Build the course site from the *executed* notebooks.

The notebooks in git carry no outputs. ``python -m helpers.book run`` executes
them with papermill into ``_build/notebooks/``; this module assembles a
staging copy of the book (``_config.yml``, ``_toc.yml``, ``book/`` and those
executed notebooks) and runs ``jupyter-book build`` on it with warnings
treated as errors, so the site shows real outputs and figures and never runs
a notebook a second time.

    python -m helpers.site build [--executed _build/notebooks] [--out _build/site]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import REPO_DIR
from .errors import BookError

STAGE_ITEMS = ("_config.yml", "_toc.yml", "book")


def toc_notebooks(toc: Path) -> list[str]:
    """Stems of the notebooks (``notebooks/NN_name``) that ``_toc.yml`` lists."""
    import yaml

    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("notebooks/"):
                found.append(f)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(toc.read_text(encoding="utf-8")))
    return found


def stage(executed: Path, stage_dir: Path, repo: Path = REPO_DIR) -> Path:
    """Copy the book sources and the executed notebooks into ``stage_dir``."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    for item in STAGE_ITEMS:
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, stage_dir / item)
        else:
            shutil.copy2(src, stage_dir / item)
    (stage_dir / "notebooks").mkdir()
    missing = []
    for stem in toc_notebooks(repo / "_toc.yml"):
        name = Path(stem).name + ".ipynb"
        src = executed / name
        if not src.exists():
            missing.append(name)
            continue
        shutil.copy2(src, stage_dir / "notebooks" / name)
    if missing:
        raise BookError(
            f"executed notebooks missing in {executed}: {', '.join(missing)}. "
            "Run `python -m helpers.book run` (or `make book`) first."
        )
    return stage_dir


def build(executed: Path | None = None, out: Path | None = None, strict: bool = True) -> Path:
    """Stage and build the site; return the folder holding ``index.html``."""
    executed = executed or REPO_DIR / "_build" / "notebooks"
    out = out or REPO_DIR / "_build" / "site"
    src = stage(executed, out.parent / "site-src")
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src), "--path-output", str(out)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise BookError(f"jupyter-book build failed (warnings count as errors):\n{tail}")
    html = out / "_build" / "html"
    print(f"site built in {time.perf_counter() - t0:.1f} s: {html / 'index.html'}")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.site")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the site from executed notebooks")
    b.add_argument("--executed", type=Path, default=None, help="folder of executed notebooks")
    b.add_argument("--out", type=Path, default=None, help="output folder (default _build/site)")
    b.add_argument("--no-strict", action="store_true", help="do not treat warnings as errors")
    args = parser.parse_args(argv)
    try:
        build(args.executed, args.out, strict=not args.no_strict)
    except BookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
