"""Time training honestly: whole optimizer steps by the wall clock, as an mmengine hook.

mmengine logs each iteration's time as a moving average over 10 iterations,
so a slow first step leaks into the times logged after it, and with gradient
accumulation the iteration that steps the optimizer is slower than the others.
:class:`StepTimerHook` instead reads the wall clock at the end of every
optimizer step (every ``accumulative_counts`` iterations), after
``torch.cuda.synchronize()`` so that queued GPU work is counted, and keeps the
differences: each one is a whole step, data loading, forward, backward,
optimizer and hooks included. The first ``warmup_steps`` steps (CUDA kernel
selection, allocator growth, data workers starting) are left out; the rest
are summarised as median, p10/p90, min/max and samples per second, written
to a JSON file after every step (a run stopped early still leaves one).

Peak memory is read after every iteration, before mmengine's logger reads
it: mmengine resets PyTorch's peak counters each time it logs, so a reading
at the end of training would only cover the last logging interval (the
first H200 run of this hook reported 4.3 GiB for a 15.3 GiB run that way).

In an XTuner config (``helpers.config`` writes it when ``Recipe.step_timing``
names a file)::

    from helpers.timing import StepTimerHook
    custom_hooks = [dict(type=StepTimerHook, out='/tmp/steps.json', batch_size=batch_size,
                         accumulative_counts=accumulative_counts, warmup_steps=3)]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook

from .errors import UsageError


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summarise(step_seconds: list[float], warmup_steps: int, samples_per_step: int) -> dict[str, Any]:
    """Median, spread and samples/s of the steps after the warm-up ones.

    >>> s = summarise([9.0, 5.0, 4.0, 2.0, 2.2, 1.8, 2.0], warmup_steps=3, samples_per_step=16)
    >>> s["timed_steps"], s["median_step_seconds"], s["samples_per_second"]
    (4, 2.0, 8.0)
    """
    timed = step_seconds[warmup_steps:]
    if not timed:
        return {"timed_steps": 0}
    ordered = sorted(timed)

    def pct(q: float) -> float:  # nearest-rank percentile
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    median = statistics.median(timed)
    return {
        "timed_steps": len(timed),
        "median_step_seconds": round(median, 4),
        "p10_step_seconds": round(pct(0.1), 4),
        "p90_step_seconds": round(pct(0.9), 4),
        "min_step_seconds": round(ordered[0], 4),
        "max_step_seconds": round(ordered[-1], 4),
        "samples_per_second": round(samples_per_step / median, 3),
    }


class StepTimerHook(Hook):
    """Wall-clock time of whole optimizer steps, written to ``out`` as JSON (see the module's text)."""

    priority = "VERY_HIGH"  # read the clock before other hooks' after_train_iter (a final checkpoint save)

    def __init__(self, out: str, batch_size: int, accumulative_counts: int = 1, warmup_steps: int = 3) -> None:
        if accumulative_counts < 1 or batch_size < 1 or warmup_steps < 0:
            raise UsageError("StepTimerHook: batch_size and accumulative_counts >= 1, warmup_steps >= 0")
        self.out = Path(out)
        self.batch_size = batch_size
        self.accumulative_counts = accumulative_counts
        self.warmup_steps = warmup_steps
        self.step_seconds: list[float] = []
        self.losses: list[float] = []
        self._last = 0.0
        self._started = False
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.data_wait: list[float] = []  # per iteration: host seconds from the last iteration's end to this start
        self._iter_end = 0.0

    def before_train(self, runner) -> None:  # type: ignore[no-untyped-def]
        _sync()
        self._last = time.perf_counter()
        self._started = True
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:  # type: ignore[no-untyped-def]
        # mmengine fetches the batch between the previous iteration's hooks and this one's
        self.data_wait.append(round(time.perf_counter() - (self._iter_end or self._last), 4))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:  # type: ignore[no-untyped-def]
        self._read_peak_memory()
        self._iter_end = time.perf_counter()
        if outputs and "loss" in outputs:
            self.losses.append(round(float(outputs["loss"]), 5))
        if (batch_idx + 1) % self.accumulative_counts:
            return
        _sync()
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now
        self.write()

    def _read_peak_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            self.peak_allocated = max(self.peak_allocated, torch.cuda.max_memory_allocated())
            self.peak_reserved = max(self.peak_reserved, torch.cuda.max_memory_reserved())

    def after_train(self, runner) -> None:  # type: ignore[no-untyped-def]
        self.write()

    def result(self) -> dict[str, Any]:
        """What :meth:`write` saves: the settings, every step's seconds, the summary, peak memory, losses."""
        import torch

        cuda = torch.cuda.is_available()
        samples = self.batch_size * self.accumulative_counts
        return {
            "timer": "helpers.timing.StepTimerHook: wall clock after torch.cuda.synchronize() at each optimizer step",
            "batch_size": self.batch_size,
            "accumulative_counts": self.accumulative_counts,
            "samples_per_step": samples,
            "warmup_steps": self.warmup_steps,
            "optimizer_steps": len(self.step_seconds),
            "step_seconds": [round(s, 4) for s in self.step_seconds],
            **summarise(self.step_seconds, self.warmup_steps, samples),
            "peak_memory_allocated_gib": round(self.peak_allocated / 2**30, 2) if cuda else None,
            "peak_memory_reserved_gib": round(self.peak_reserved / 2**30, 2) if cuda else None,
            "losses": self.losses,
            "data_wait_seconds": self.data_wait,
        }

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result(), indent=1) + "\n")
