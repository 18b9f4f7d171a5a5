"""Draw the single-GPU training results from the JSON files in `benchmarks/results/`.

python benchmarks/plot_train.py    # writes the three figures of book/reference/figures/

* `training-h200.png`: samples/s and peak memory of the course and the fast recipes (H200, official code);
* `training-h200-losses.png`: the first 30 losses of the course and the fast recipes, same data and seed;
* `training-h100.png`: the earlier H100 runs (the book's own model code).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "book" / "reference" / "figures"

#: (results file, label) in the order the page discusses them; the first is the baseline.
RUNS_H100 = [
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

#: The recipes of the H200 table, 7 tiles first (the course is the baseline), then 13 tiles.
RUNS_H200 = [
    ("train-course-h200.json", "course, 7 tiles, 4x4"),
    ("train-fast-h200.json", "fast without labelled/compile, 7 tiles"),
    ("train-labelled-h200.json", "fast without compile, 7 tiles"),
    ("train-fastc-h200.json", "fast, 7 tiles, 4x4"),
    ("train-course-13-h200.json", "course, 13 tiles, 4x4"),
    ("train-fastc-13-h200.json", "fast, 13 tiles, 4x4"),
    ("train-16gbc-13-h200.json", "fast, 13 tiles, 2x8 (16 GB)"),
]

#: Loss panels: (title, [(results file, label), ...]); the same 64 samples and seed in each panel.
LOSSES_H200 = [
    (
        "7 tiles, 4 x 4",
        [
            ("train-course-h200.json", "course"),
            ("train-labelled-h200.json", "fast without compile"),
            ("train-fastc-h200.json", "fast"),
        ],
    ),
    (
        "13 tiles",
        [
            ("train-course-13-h200.json", "course, 4 x 4"),
            ("train-fastc-13-h200.json", "fast, 4 x 4"),
            ("train-16gbc-13-h200.json", "fast, 2 x 8 (16 GB)"),
        ],
    ),
]


def load(runs: list[tuple[str, str]] = RUNS_H100, results: Path = RESULTS) -> list[tuple[str, dict]]:
    """The runs that exist, as (label, result) pairs, in the order given."""
    return [(label, json.loads((results / name).read_text())) for name, label in runs if (results / name).exists()]


def _baselines(runs: list[tuple[str, dict]]) -> list[dict]:
    """Each run's baseline: the latest run before it whose label starts with "course" or "seed"."""
    base, out = runs[0][1], []
    for label, result in runs:
        if label.startswith(("course", "seed recipe (")):
            base = result
        out.append(base)
    return out


def plot(runs: list[tuple[str, dict]], out: Path, title: str | None = None) -> Path:
    """Two bar charts: samples/s with the ratio to each run's baseline, and peak GPU memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = [b["samples_per_second"] for b in _baselines(runs)][::-1]
    labels = [label for label, _ in runs][::-1]
    sps = [r["samples_per_second"] for _, r in runs][::-1]
    mem = [r["peak_gpu_memory_gib"] for _, r in runs][::-1]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(11, 0.45 * len(runs) + 1.4), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    colors = ["tab:gray" if lab.startswith(("course", "seed")) else "tab:blue" for lab in labels]
    ax1.barh(labels, sps, color=colors)
    for y, (v, b) in enumerate(zip(sps, bases)):
        ax1.text(v, y, f" {v:.2f} ({v / b:.2f}x)", va="center", fontsize=8)
    ax1.set_xlabel("samples per second (ratio to the course/seed recipe at the same shape)")
    ax1.set_xlim(0, max(sps) * 1.3)
    ax2.barh(labels, mem, color=colors)
    for y, v in enumerate(mem):
        ax2.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax2.axvline(15, color="tab:red", ls=":", lw=1, label="15 GiB (a 16 GB card)")
    ax2.set_xlabel("peak GPU memory allocated (GiB)")
    ax2.set_xlim(0, max(mem) * 1.25)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title or f"QLoRA training at InternVL2-2B's sizes on one {runs[0][1]['device']}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_losses(panels: list[tuple[str, list[tuple[str, dict]]]], out: Path) -> Path:
    """One panel per shape: each run's logged loss against the samples seen, on shared data and seed.

    A logged loss is one micro-batch's, so a run at 2 x 8 logs twice as often per sample as one at 4 x 4;
    plotting against samples seen (iteration x micro-batch size) puts the same optimizer steps one above
    the other.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels):
        for (label, result), style in zip(runs, ["-", "--", ":"]):
            losses, batch = result["losses"], result["step_timing"]["batch_size"]
            ax.plot([batch * (i + 1) for i in range(len(losses))], losses, style, marker=".", lw=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("samples seen (16 per optimizer step)")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("First 30 logged losses: the same 64 samples and seed (random weights: the values only compare)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_all(results: Path = RESULTS, figures: Path = FIGURES) -> list[Path]:
    """Redraw every figure the training-benchmarks page shows."""
    h200 = load(RUNS_H200, results)
    device = h200[0][1]["device"]
    losses = [(title, load(runs, results)) for title, runs in LOSSES_H200]
    return [
        plot(h200, figures / "training-h200.png", f"Course and fast XTuner recipes, official code, one {device}"),
        plot_losses(losses, figures / "training-h200-losses.png"),
        plot(load(RUNS_H100, results), figures / "training-h100.png"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--figures", default=str(FIGURES))
    args = ap.parse_args()
    for path in draw_all(Path(args.results), Path(args.figures)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
