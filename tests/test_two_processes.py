"""Two processes on CPUs: the code path of two GPUs (torchrun, XTuner's distributed sampler), with gloo.

Notebooks 03-05 run on the tiny profile with ``nproc_per_node=2``: notebook 04 trains with two
ranks, is interrupted half-way (its demo) and resumes; notebook 05 merges the two ranks' own
loss logs into the global batch's curve. No training process may outlive the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_DIR, train

pytestmark = pytest.mark.notebooks

STEPS = 12


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.book", "run", "--only", "03,04,05", "--build-dir", str(tmp / "nb")]
        + ["-p", "output_dir", str(tmp / "out"), "-p", "nproc_per_node", "2", "-p", "max_steps", str(STEPS)]
        + ["-p", "save_steps", "4", "-p", "log_interval", "1", "-p", "demo_interrupt", "true"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return tmp


def _outputs(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            parts.append("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_two_ranks_train_every_iteration_on_their_own_batches(two_rank_run: Path) -> None:
    work = two_rank_run / "out" / "qlora" / "work"
    ranks = train.read_rank_losses(work)
    assert sorted(ranks) == [0, 1]
    for losses in ranks.values():
        assert sorted(losses) == list(range(1, STEPS + 1))
    assert ranks[0][1] != ranks[1][1], "both ranks saw the same micro-batch: the sampler did not shard the data"
    merged = train.merged_losses(work)
    assert [r["ranks"] for r in merged] == [2] * STEPS
    assert merged[0]["loss"] == pytest.approx((ranks[0][1] + ranks[1][1]) / 2)
    assert merged[-1]["loss"] < merged[0]["loss"], "the global batch's loss did not fall"


def test_the_interrupted_two_rank_run_resumed_and_left_no_process(two_rank_run: Path) -> None:
    text = _outputs(two_rank_run / "nb" / "04_qlora_training.ipynb")
    assert "processes: 2 (cpu)" in text
    assert "resumed from iter_" in text, text[-2000:]
    work = two_rank_run / "out" / "qlora" / "work"
    assert train.list_checkpoints(work)[-1].name == f"iter_{STEPS}.pth"
    leftover = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(work) in cmd:
                leftover.append(cmd[:160])
    assert not leftover, leftover


def test_notebook_05_draws_the_merged_curve(two_rank_run: Path) -> None:
    assert "mean of the ranks" in _outputs(two_rank_run / "nb" / "05_loss_curves.ipynb")
    assert (two_rank_run / "out" / "figures" / "loss_per_rank.png").stat().st_size > 10_000


def test_deepspeed_with_two_cpu_processes_is_refused_before_it_starts(tmp_path: Path) -> None:
    """Measured: ZeRO's all-gather fails over gloo; the book says so up front instead of after loading."""
    from helpers.errors import UsageError

    config = tmp_path / "config.py"
    config.write_text("# not read: the check comes first\n")
    with pytest.raises(UsageError, match="one process with DeepSpeed"):
        train.train(config, tmp_path / "work", gpus=2, deepspeed="deepspeed_zero2")
    assert not (tmp_path / "work").exists()
