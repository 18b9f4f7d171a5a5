"""helpers.timing.StepTimerHook: whole optimizer steps, warm-up left out, written as JSON."""

from __future__ import annotations

import json
import time

import pytest

from helpers import config
from helpers.errors import UsageError
from helpers.timing import StepTimerHook, summarise


def test_summary_leaves_out_warmup_and_reports_the_spread():
    s = summarise([10.0, 3.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 3, samples_per_step=16)
    assert s["timed_steps"] == 10
    assert s["median_step_seconds"] == 5.5 and s["min_step_seconds"] == 1.0 and s["max_step_seconds"] == 10.0
    assert s["p10_step_seconds"] == 2.0 and s["p90_step_seconds"] == 9.0
    assert s["samples_per_second"] == pytest.approx(16 / 5.5, abs=1e-3)
    assert summarise([1.0, 2.0], 3, 16) == {"timed_steps": 0}


def test_hook_counts_one_step_per_accumulation_and_times_the_wall_clock(tmp_path):
    out = tmp_path / "steps.json"
    hook = StepTimerHook(str(out), batch_size=4, accumulative_counts=4, warmup_steps=3)
    hook.before_train(None)
    for i in range(22):  # 5 whole steps; the last 2 iterations start a sixth that never steps
        time.sleep(0.02 if i == 8 else 0.0)  # waiting for a batch
        hook.before_train_iter(None, i)
        time.sleep(0.01 if (i + 1) % 4 else 0.03)  # the iteration that steps the optimizer is slower
        hook.after_train_iter(None, i, outputs={"loss": 2.0 - i / 100})
    assert len(json.loads(out.read_text())["losses"]) == 20  # written at the end of each step
    hook.after_train(None)
    data = json.loads(out.read_text())
    assert data["optimizer_steps"] == 5 and data["timed_steps"] == 2 and data["samples_per_step"] == 16
    assert len(data["losses"]) == 22 and data["losses"][0] == 2.0
    assert len(data["data_wait_seconds"]) == 22 and max(data["data_wait_seconds"]) == data["data_wait_seconds"][8]
    assert data["data_wait_seconds"][8] >= 0.02
    # each step is three 10 ms iterations and one 30 ms one, at least
    assert all(s >= 0.06 for s in data["step_seconds"]), data["step_seconds"]
    assert data["median_step_seconds"] < 1.0
    assert data["samples_per_second"] == pytest.approx(16 / data["median_step_seconds"], rel=1e-2)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(UsageError, match="accumulative_counts"):
        StepTimerHook(str(tmp_path / "x.json"), batch_size=4, accumulative_counts=0)


def test_config_carries_the_timer_and_the_levers():
    base = config.Recipe("/m", "/d/ex_cn.json", "/d")
    plain = config.render(base)
    assert "StepTimerHook" not in plain and "book_" not in plain  # the course's config, unchanged
    fast = config.render(base.changed(step_timing="/tmp/s.json", attention="sdpa", bnb_compute_dtype="bfloat16"))
    assert "from helpers.timing import StepTimerHook" in fast
    assert "dict(type=StepTimerHook, out='/tmp/s.json', batch_size=batch_size," in fast
    assert "book_attention = 'sdpa'" in fast and "book_bnb_compute_dtype = 'bfloat16'" in fast
    assert "book_lm_head = '4bit'" in fast and "book_checkpoint_every = 1" in fast
    assert "book_loss_logits = 'all'" in fast
    compile(fast, "config.py", "exec")
    with pytest.raises(Exception, match="attention"):
        config.render(base.changed(attention="flash"))
