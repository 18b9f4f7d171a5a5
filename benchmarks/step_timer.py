"""An mmengine hook that times whole optimizer steps honestly, for the DeepSpeed benchmarks.

mmengine logs each iteration's ``time`` as a moving average, and CUDA runs
asynchronously, so a logged iteration time can belong to another iteration's
work. This hook calls ``torch.cuda.synchronize()`` after every iteration that
ends an optimizer step (every ``accumulation``-th micro-batch), reads the wall
clock there, and writes the step times and the peak allocated GPU memory to a
JSON file when training ends. Minimal on purpose (issue #16 is writing the
book's general step timer; use that one when it lands).

Add it to an XTuner config written by helpers.config::

    from step_timer import StepTimerHook
    custom_hooks.append(dict(type=StepTimerHook, out="/tmp/steps.json", accumulation=2))
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmengine.hooks import Hook


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimerHook(Hook):
    """Wall-clock seconds of each optimizer step (synchronised), and peak GPU memory, to ``out``."""

    priority = "VERY_LOW"

    def __init__(self, out: str, accumulation: int = 1) -> None:
        self.out = Path(out)
        self.accumulation = max(1, int(accumulation))
        self.marks: list[float] = []

    def before_train(self, runner) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        self.marks = [time.perf_counter()]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if (runner.iter + 1) % self.accumulation == 0:  # runner.iter is the iteration that just ran
            _sync()
            self.marks.append(time.perf_counter())

    def after_train(self, runner) -> None:
        import torch

        steps = [round(b - a, 4) for a, b in zip(self.marks, self.marks[1:])]
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(
            json.dumps(
                {
                    "accumulation": self.accumulation,
                    "seconds_per_optimizer_step": steps,
                    "peak_allocated_gib": round(peak, 2) if peak is not None else None,
                },
                indent=2,
            )
            + "\n"
        )
