"""What running the book costs on a CPU machine: seconds and peak memory of every notebook.

Runs the whole book on the tiny profile through the runner (``python -m helpers.book run``), or
reads the summary of a run already made (``make book`` writes ``_build/notebooks/run-summary.json``),
and writes one JSON with each notebook's wall time and peak resident memory (the kernel and its child
processes, :class:`helpers.book.PeakMemory`), the machine and the versions. The introduction's cost
table and the notebooks' cost lines quote it.

    python benchmarks/bench_book.py --out benchmarks/results/book-tiny-cpu.json
    python benchmarks/bench_book.py --summary _build/notebooks/run-summary.json   # after `make book`
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import book
from helpers.env import package_version


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarise(summary: dict) -> dict:
    """The result file's content from a runner summary: one row per notebook, the totals, the machine."""
    rows = [
        {
            "notebook": r["notebook"],
            "status": r["status"],
            "seconds": r["seconds"],
            "peak_memory_mb": r.get("peak_memory_mb"),
        }
        for r in summary["notebooks"]
    ]
    if any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"not every notebook ran: {[(r['notebook'], r['status']) for r in rows]}")
    peaks = [r["peak_memory_mb"] for r in rows if r["peak_memory_mb"] is not None]
    return {
        "benchmark": "book",
        "profile": summary["profile"],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "versions": {p: package_version(p) for p in ("torch", "transformers", "xtuner", "bitsandbytes", "papermill")},
        "memory_note": "peak memory of the kernel and its child processes: the sum of their proportional set "
        "sizes (PSS, shared pages split between the processes that share them), sampled every 0.5 s",
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "max_peak_memory_mb": max(peaks) if peaks else None,
        "notebooks": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", help="a finished run's run-summary.json (default: run the book now)")
    ap.add_argument(
        "--build-dir", default=str(ROOT / "_build" / "bench-book"), help="where a new run goes (emptied first)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "book-tiny-cpu.json"))
    args = ap.parse_args()
    if args.summary:
        summary_path = Path(args.summary)
    else:
        build = Path(args.build_dir)
        if build.exists():  # a fresh run: earlier outputs would let notebook 04 skip its training
            shutil.rmtree(build)
        book.run_book("tiny", [("output_dir", str(build / "outputs"))], build_dir=build)
        summary_path = build / book.SUMMARY_NAME
    result = summarise(json.loads(summary_path.read_text(encoding="utf-8")))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for r in result["notebooks"]:
        print(f"{r['notebook']:<24} {r['seconds']:8.1f} s {r['peak_memory_mb'] or 0:8.0f} MB")
    print(f"{'total':<24} {result['total_seconds']:8.1f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
