"""Draw the single-GPU training results: samples/s and peak memory per recipe, from the JSON files.

python benchmarks/plot_train.py            # writes book/reference/figures/training-h100.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: (results file, label) in the order the page discusses them; the first is the baseline.
RUNS = [
    ("train-seed-recipe-h100.json", "seed recipe (XTuner, fp16 AMP, eager, 4x4)"),
    ("train-seed-recipe-noamp-h100.json", "seed recipe without AMP"),
    ("train-tuned-h100.json", "XTuner + bf16 + SDPA, 4x4"),
    ("train-tuned-b8-h100.json", "XTuner + bf16 + SDPA, 8x2"),
    ("train-tuned-16gb-h100.json", "XTuner + bf16 + SDPA, 2x8 (16 GB)"),
    ("train-peft-loop-h100.json", "plain PEFT loop, eager, 4x4"),
    ("train-peft-loop-sdpa-h100.json", "PEFT loop + SDPA, 4x4 (tuned)"),
    ("train-peft-loop-sdpa-b2-h100.json", "PEFT loop + SDPA, 2x8 (16 GB)"),
    ("train-peft-loop-sdpa-b1-h100.json", "PEFT loop + SDPA, 1x16"),
    ("train-peft-loop-sdpa-nockpt-h100.json", "PEFT loop + SDPA, no checkpointing"),
]


def load(results: Path = RESULTS) -> list[tuple[str, dict]]:
    """The runs that exist, as (label, result) pairs, in RUNS order."""
    return [(label, json.loads((results / name).read_text())) for name, label in RUNS if (results / name).exists()]


def plot(runs: list[tuple[str, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = runs[0][1]["samples_per_second"]
    labels = [label for label, _ in runs][::-1]
    sps = [r["samples_per_second"] for _, r in runs][::-1]
    mem = [r["peak_gpu_memory_gib"] for _, r in runs][::-1]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(11, 0.45 * len(runs) + 1.4), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    colors = ["tab:gray" if "seed" in lab else "tab:blue" if "XTuner" in lab else "tab:orange" for lab in labels]
    ax1.barh(labels, sps, color=colors)
    for y, v in enumerate(sps):
        ax1.text(v, y, f" {v:.2f} ({v / base:.2f}x)", va="center", fontsize=8)
    ax1.axvline(base * 1.5, color="tab:red", ls="--", lw=1, label="1.5x the seed recipe")
    ax1.set_xlabel("samples per second (1,985 tokens each)")
    ax1.set_xlim(0, max(sps) * 1.3)
    ax1.legend(loc="upper right", fontsize=8)
    ax2.barh(labels, mem, color=colors)
    for y, v in enumerate(mem):
        ax2.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax2.axvline(16, color="tab:red", ls=":", lw=1, label="a 16 GB card")
    ax2.axvline(runs[0][1]["peak_gpu_memory_gib"], color="tab:gray", ls="--", lw=1, label="seed recipe's peak")
    ax2.set_xlabel("peak GPU memory (GiB)")
    ax2.set_xlim(0, max(mem) * 1.2)
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"QLoRA training at InternVL2-2B's sizes on one {runs[0][1]['device']}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "book" / "reference" / "figures" / "training-h100.png"))
    args = ap.parse_args()
    print(plot(load(), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
