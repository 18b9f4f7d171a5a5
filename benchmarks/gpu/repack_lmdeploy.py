"""Repack LMDeploy's wheel without TurboMind's compiled extension, so it travels to the GPU machine.

The lmdeploy 0.18.0 wheel is 106.7 MB, over the 64 MiB a device call may
carry; almost all of it is ``lmdeploy/turbomind/_turbomind*.so`` and
``lmdeploy/turbomind/lib64/``, which link CUDA 12 libraries the CUDA 13
machines lack (book/reference/inference-benchmarks.md), so only the PyTorch
engine can run there anyway. This drops those files and their ``RECORD``
lines and writes the wheel again under the same name (1.75 MB).

    python benchmarks/gpu/repack_lmdeploy.py .whl-lmd/lmdeploy-0.18.0-*.whl
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def dropped(name: str) -> bool:
    """The TurboMind extension and its bundled libraries."""
    return name.startswith("lmdeploy/turbomind/_turbomind") or name.startswith("lmdeploy/turbomind/lib64/")


def repack(wheel: Path) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without :func:`dropped` files; return its size before and after."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",")[0])).encode()
            out.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        size_before, size_after = repack(Path(arg))
        print(f"{arg}: {size_before / 1e6:.1f} MB -> {size_after / 1e6:.2f} MB")
