"""Give a new virtual environment the big packages another one already has, by hard links.

PyPI's torch 2.14.1 is a CUDA build: torch, triton and the ``nvidia-*``/``cuda-*`` wheels take about
5.3 GB of a venv. The book has two venvs on one machine (``.venv`` and ms-swift's ``.venv-swift``,
requirements/swift.txt says why) that pin the same torch, so the second one links those files instead
of copying them (measured on the 2-core CPU machine: .venv-swift 1.3 GB on disk instead of 6.5 GB,
installed in 166 s instead of 263 s).

    python tools/share_packages.py SOURCE_VENV TARGET_VENV LOCK_FILE

Only distributions whose name matches ``SHARED`` and whose version is the one ``LOCK_FILE`` pins are
linked, every file their RECORD lists (console scripts are copied with the target's interpreter in
their first line). pip then finds them installed and skips them. Nothing is linked when the two venvs
run different Pythons or sit on different file systems; pip installs as usual then. Uninstalling a
package in one venv unlinks only that venv's names, so neither venv can break the other.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from pathlib import Path

SHARED = re.compile(r"^(torch|torchvision|triton|nvidia[-_].*|cuda[-_].*)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"[share] {venv}: expected one lib/python3.*/site-packages, found {len(found)}")
    return found[0]


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_normalise(name)] = version.split(";", 1)[0].strip()
    return pins


def shareable(site: Path, pins: dict[str, str]) -> list[Path]:
    """The ``*.dist-info`` folders in ``site`` of shared packages at the version ``pins`` asks for."""
    chosen = []
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        key = _normalise(name)
        if SHARED.match(key) and pins.get(key) == version and (info / "RECORD").is_file():
            chosen.append(info)
    return chosen


def link_distribution(info: Path, source_venv: Path, target_venv: Path) -> int:
    """Hard-link (or, for scripts, copy and re-point) every file of one distribution; bytes shared."""
    site, target_site = info.parent.resolve(), _site_packages(target_venv).resolve()
    shared = 0
    with (info / "RECORD").open(newline="") as handle:
        for row in csv.reader(handle):
            if not row or not row[0]:
                continue
            src = (site / row[0]).resolve()
            if not src.is_file():
                continue
            if src.is_relative_to(site):
                dst = target_site / src.relative_to(site)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    os.link(src, dst)
                    shared += src.stat().st_size
            elif src.is_relative_to((source_venv / "bin").resolve()):
                dst = target_venv / "bin" / src.name
                text = src.read_bytes()
                first, _, rest = text.partition(b"\n")
                if first.startswith(b"#!") and b"python" in first:
                    text = b"#!" + str(target_venv.resolve() / "bin" / "python").encode() + b"\n" + rest
                dst.write_bytes(text)
                shutil.copymode(src, dst)
    return shared


def share(source_venv: Path, target_venv: Path, lock: Path) -> int:
    """Link what can be shared; returns the bytes shared (0 where it cannot be done)."""
    source_site, target_site = _site_packages(source_venv), _site_packages(target_venv)
    if source_site.parent.name != target_site.parent.name:
        print(f"[share] {source_site.parent.name} vs {target_site.parent.name}: nothing shared")
        return 0
    if source_site.stat().st_dev != target_site.stat().st_dev:
        print("[share] the two venvs are on different file systems: nothing shared")
        return 0
    total = 0
    for info in shareable(source_site, _pins(lock)):
        total += link_distribution(info, source_venv, target_venv)
    return total


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    source, target, lock = (Path(a) for a in args)
    if not (source / "bin" / "python").exists():
        print(f"[share] {source} is not a venv yet: nothing shared")
        return 0
    shared = share(source, target, lock)
    print(f"[share] {shared / 1e9:.1f} GB of torch/triton/CUDA files linked from {source} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
