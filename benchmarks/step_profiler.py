"""Profile one whole optimizer step with ``torch.profiler``, in XTuner (a hook) or in a plain loop (a context).

Issue #16 asks where XTuner's time goes next to a plain transformers + peft loop.
Both runners profile the same thing, one optimizer step after the warm-up
steps (every micro-batch of it, data loading and hooks included), and
:func:`summarise` reduces each to the same figures:

* ``wall_seconds``: the step by the wall clock, after ``torch.cuda.synchronize()``;
* ``device_busy_seconds``: the time in which at least one GPU kernel ran (on
  a CPU: an operator), and ``idle_share``, the part of the wall time not
  covered by it, i.e. the time the GPU waited for the host (Python, data,
  hooks, logging, launches);
* ``top``: the operators with the most own time, with their call counts.

XTuner: ``benchmarks/bench_train.py --profile-step 4`` appends the hook to the
config (``benchmarks/`` is put on the training process's ``PYTHONPATH``).
The plain loop: ``benchmarks/bench_peft_loop.py --profile-step 4``. Each writes
``<out>.json`` and the profiler's own table beside it (``<out>.txt``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _profiler() -> Any:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=activities, record_shapes=False, with_stack=False)


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) microsecond intervals (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e6


def summarise(prof: Any, wall_seconds: float, top: int = 20) -> dict[str, Any]:
    """The figures of the module's text from a finished ``torch.profiler.profile``.

    The busy time is the union of the intervals in which a GPU kernel ran (on
    a CPU: an operator), so nested operators and an operator with its own
    kernels are not counted twice. The ``top`` list ranks operators (``aten::``
    and the like) by the device time of the kernels they launched.
    """
    import torch
    from torch.autograd import DeviceType

    cuda = torch.cuda.is_available()
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    busy = _union_seconds([(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == kind])
    operators = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]

    def own(e: Any) -> float:  # microseconds of the operator's own work on the device that matters
        return float(getattr(e, "self_device_time_total", 0) or 0) if cuda else float(e.self_cpu_time_total)

    ranked = sorted(operators, key=own, reverse=True)[:top]
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "wall_seconds": round(wall_seconds, 4),
        "device_busy_seconds": round(min(busy, wall_seconds), 4),
        "idle_share": round(max(0.0, 1 - busy / wall_seconds), 4) if wall_seconds > 0 else None,
        "operators": len(operators),
        "calls": int(sum(e.count for e in operators)),
        "top": [{"name": e.key, "calls": int(e.count), "own_seconds": round(own(e) / 1e6, 5)} for e in ranked],
    }


def write(prof: Any, wall_seconds: float, out: str | Path) -> dict[str, Any]:
    """Write :func:`summarise` to ``out`` (JSON) and the profiler's table to ``out`` with ``.txt``."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarise(prof, wall_seconds)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    out.with_suffix(".txt").write_text(prof.key_averages().table(sort_by=key, row_limit=40) + "\n")
    return summary


@contextmanager
def profiled_step(out: str | Path) -> Iterator[None]:
    """Profile the block (one optimizer step of a plain loop) and :func:`write` what it found."""
    _sync()
    prof = _profiler()
    t0 = time.perf_counter()
    with prof:
        yield
        _sync()
    write(prof, time.perf_counter() - t0, out)


class StepProfilerHook(Hook):
    """Profile optimizer step ``step`` (0-based: the steps before it are warm-up) of an XTuner run."""

    priority = "VERY_LOW"  # the last hook of an iteration: the profiled step includes the others' work

    def __init__(self, out: str, step: int = 4, accumulative_counts: int = 1) -> None:
        if step < 1 or accumulative_counts < 1:
            raise ValueError("StepProfilerHook: step >= 1 (step 0 is warm-up) and accumulative_counts >= 1")
        self.out = out
        self.first = step * accumulative_counts  # the first iteration of the profiled step
        self.last = self.first + accumulative_counts - 1
        self.prof: Any = None
        self.t0 = 0.0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:  # type: ignore[no-untyped-def]
        # start at the end of the iteration before the step, so that its data loading is inside
        if runner.iter + 1 == self.first:
            _sync()
            self.prof = _profiler()
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif runner.iter == self.last and self.prof is not None:
            _sync()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            summary = write(self.prof, wall, self.out)
            self.prof = None
            runner.logger.info(f"step_profiler: {json.dumps({k: v for k, v in summary.items() if k != 'top'})}")
