"""The `--profile gpu` rehearsal's bookkeeping: sample GPU memory, then write one results file.

    python benchmarks/rehearsal.py sample gpumem.csv            # until killed: time, MiB used (every 0.5 s)
    python benchmarks/rehearsal.py report --summary A/run-summary.json --summary B/run-summary.json \
        --memory gpumem-1.csv --memory gpumem-2.csv --facts facts.json --out rehearsal-gpu-h200.json

Each notebook's peak is the highest whole-GPU memory use sampled while it ran (from the runner's
``started`` time to ``started + seconds``): what ``nvidia-smi`` would show, the CUDA context and
LMDeploy's cache reservation included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def sample(path: Path, every: float = 0.5) -> None:
    """Append ``time,used_mib`` lines for GPU 0 until killed (NVML, as nvidia-smi reads it)."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    with path.open("a") as f:
        while True:
            f.write(f"{time.time():.2f},{pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20:.0f}\n")
            f.flush()
            time.sleep(every)


def peaks(summaries: list[Path], memory: list[Path]) -> list[dict]:
    """One row per executed notebook: seconds, kernel, and the peak GPU memory sampled while it ran."""
    samples = []
    for path in memory:
        for line in path.read_text().splitlines():
            t, mib = line.split(",")
            samples.append((float(t), float(mib)))
    rows = []
    for path in summaries:
        for nb in json.loads(path.read_text())["notebooks"]:
            start, seconds = nb.get("started"), nb.get("seconds")
            during = [m for t, m in samples if start and seconds and start <= t <= start + seconds]
            rows.append(
                {
                    "notebook": nb["notebook"],
                    "status": nb["status"],
                    "seconds": seconds,
                    "kernel": nb.get("kernel"),
                    "peak_gpu_memory_gib": round(max(during) / 1024, 1) if during else None,
                    "error": nb.get("error"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("path", type=Path)
    r = sub.add_parser("report")
    r.add_argument("--summary", type=Path, action="append", required=True)
    r.add_argument("--memory", type=Path, action="append", default=[])
    r.add_argument("--facts", type=Path, help="JSON of facts to include (model, data, versions, agreement)")
    r.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "sample":
        sample(args.path)
        return 0
    rows = peaks(args.summary, args.memory)
    facts = json.loads(args.facts.read_text()) if args.facts else {}
    result = {"name": "rehearsal-gpu", **facts, "notebooks": rows}
    result["total_seconds"] = round(sum(r["seconds"] or 0 for r in rows), 1)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        print(
            f"{row['notebook']:<24} {row['status']:<8} {row['seconds'] or 0:>7.1f} s "
            f"{row['peak_gpu_memory_gib'] or '-':>6} GiB  {row['kernel']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
