"""helpers.train: real XTuner QLoRA on the tiny model, progress parsing, checkpoints, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import short_recipe

from helpers import SAMPLE_DATA_DIR, config, train
from helpers.errors import BookError, RunError


def test_parse_log_line():
    line = (
        "11/23 10:41:00 - mmengine - INFO - Iter(train) [ 3/16]  lr: 1.9781e-08  eta: 0:00:12  "
        "time: 0.9512  data_time: 0.0483  grad_norm: 1.8441  loss: 6.6033"
    )
    info = train.parse_log_line(line)
    assert info["step"] == 3 and info["total"] == 16 and info["loss"] == pytest.approx(6.6033)
    assert info["lr"] == pytest.approx(1.9781e-08) and info["eta"] == "0:00:12"
    assert train.parse_log_line("mmengine - INFO - Checkpoints will be saved to ...") is None


def test_checkpoints_are_listed_by_step_and_bad_ones_explained(tmp_path):
    for n in (10, 2, 100):
        (tmp_path / f"iter_{n}.pth").write_bytes(b"")
    (tmp_path / "iter_best.pth").write_bytes(b"")
    assert [p.name for p in train.list_checkpoints(tmp_path)] == ["iter_2.pth", "iter_10.pth", "iter_100.pth"]
    with pytest.raises(BookError, match="cut off while being written.*iter_2.pth"):
        train.check_checkpoint(tmp_path / "iter_100.pth")
    with pytest.raises(BookError, match="does not exist"):
        train.check_checkpoint(tmp_path / "iter_7.pth")
    (tmp_path / "ds.pth").mkdir()
    with pytest.raises(BookError, match="no DeepSpeed model states"):
        train.check_checkpoint(tmp_path / "ds.pth")


def test_missing_config_and_mixed_work_dirs_are_refused(tmp_path):
    with pytest.raises(BookError, match="does not exist"):
        train.train(tmp_path / "nope.py", tmp_path / "work")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "iter_3.pth").write_bytes(b"x")
    (tmp_path / "cfg.py").write_text("x = 1\n")
    with pytest.raises(BookError, match="mix two runs"):
        train.train(tmp_path / "cfg.py", tmp_path / "work", resume=False)


def _recipe(model_dir: Path, **kw) -> config.Recipe:
    return short_recipe(model_dir, SAMPLE_DATA_DIR / "train.json", SAMPLE_DATA_DIR, save_total_limit=-1, **kw)


def _runs(work_dir: Path) -> list[dict[int, float]]:
    """Loss by step, one dict per start of the run (first start, then each resume)."""
    out = []
    for path in sorted(work_dir.glob("*/vis_data/scalars.json")):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        out.append({r["step"]: r["loss"] for r in rows if "loss" in r})
    return out


def test_interrupted_4bit_run_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    steps_json = tmp_path / "steps.json"
    cfg = config.write(
        _recipe(tiny_model_dir, max_iters=9, save_steps=3, step_timing=str(steps_json)), tmp_path / "cfg.py"
    )
    work = tmp_path / "work"
    killed = train.train(cfg, work, stop_after_steps=5, progress=False)
    assert killed.returncode != 0 and killed.steps == 5
    assert [p.name for p in killed.checkpoints] == ["iter_3.pth"]

    resumed = train.train(cfg, work, progress=False)
    assert resumed.ok and resumed.resumed_from == work / "iter_3.pth"
    assert resumed.steps == resumed.total_steps == 9
    assert [p.name for p in resumed.checkpoints] == ["iter_3.pth", "iter_6.pth", "iter_9.pth"]

    first, second = _runs(work)
    assert min(second) == 4, "resumed right after the checkpoint at step 3"
    assert killed.steps - 3 <= 3, "lost at most one checkpoint interval (save_steps=3)"
    # the resumed run continues the same trajectory: where both logged a step, the losses agree
    # (the killed run may not have flushed its last steps to scalars.json)
    common = sorted(set(first) & set(second))
    if common:
        assert all(second[s] == pytest.approx(first[s], abs=0.05) for s in common), (first, second)
    else:
        assert second[4] == pytest.approx(first[3], abs=0.3), (first, second)
    assert second[9] < first[1], "the loss kept falling"
    log = (work / "train.log").read_text()
    assert log.count("Linear4bit") >= 10, "the LLM's linear layers were 4-bit (bitsandbytes NF4)"
    # helpers.timing.StepTimerHook timed the resumed run's 6 optimizer steps (accumulation 1), 3 after warm-up
    timing = json.loads(steps_json.read_text())
    assert timing["optimizer_steps"] == 6 and timing["timed_steps"] == 3 and len(timing["losses"]) == 6
    # its losses are each iteration's own (mmengine logs a mean over up to 10 iterations), and falling
    assert sum(timing["losses"]) / 6 < first[1], (timing["losses"], first)


def test_a_corrupt_last_checkpoint_stops_before_training(tiny_model_dir, tmp_path):
    cfg = config.write(_recipe(tiny_model_dir, max_iters=4, save_steps=2), tmp_path / "cfg.py")
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_2.pth").write_bytes(b"PK\x03\x04 truncated")
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    with pytest.raises(BookError, match="iter_2.pth cannot be read"):
        train.train(cfg, work, progress=False)


def test_a_stale_last_checkpoint_record_falls_back_to_the_newest_file(tmp_path):
    """mmengine may delete iter_24 and be killed before it rewrites last_checkpoint."""
    (tmp_path / "iter_48.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_24.pth"))
    assert train.last_checkpoint(tmp_path) == tmp_path / "iter_48.pth"
    (tmp_path / "iter_24.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_48.pth"))
    assert train.last_checkpoint(tmp_path) == tmp_path / "iter_48.pth"
    assert train.last_checkpoint(tmp_path / "empty") is None


def test_cpu_training_computes_4bit_layers_in_float32():
    """XTuner hard-codes fp16 compute for 4-bit layers; the launcher swaps it for float32 on a CPU (in its process)."""
    import subprocess
    import sys

    code = (
        "import torch, transformers; from helpers import compat; "
        "before = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16); "
        "compat.fast_4bit_compute_on_cpu(); compat.fast_4bit_compute_on_cpu(); "
        "after = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16); "
        "bf = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16); "
        "print(before.bnb_4bit_compute_dtype, after.bnb_4bit_compute_dtype, bf.bnb_4bit_compute_dtype)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    assert out == ["torch.float16", "torch.float32", "torch.bfloat16"]


def test_cpu_training_loads_the_model_in_float32(tiny_model_dir):
    """XTuner loads InternVL2 in bfloat16; on a CPU the launcher loads it in float32 (in its process)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, transformers; from helpers import compat; "
        "compat.float32_weights_on_cpu(); compat.float32_weights_on_cpu(); "
        "m = transformers.AutoModel.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16, trust_remote_code=True); "
        "print(sorted({str(p.dtype) for p in m.parameters()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.strip() == "['torch.float32']"


def test_cpu_training_leaves_a_core_to_each_dataloader_worker(tmp_path):
    from helpers.xtuner_launch import cpu_threads

    cfg = tmp_path / "config.py"
    cfg.write_text("train_dataloader = dict(batch_size=2, num_workers=1)\n")
    assert cpu_threads(str(cfg), cores=2) == 1  # the tiny profile on 2 cores: 1 thread + 1 worker
    assert cpu_threads(str(cfg), cores=8) == 7
    cfg.write_text("train_dataloader = dict(batch_size=2, num_workers=4)\n")
    assert cpu_threads(str(cfg), cores=2) == 1 and cpu_threads(None, cores=2) == 2


def test_xtuner_runs_this_environments_tool_and_names_a_failure(tmp_path, capsys):
    listed = train.xtuner("list-cfg", "-p", "llava_internlm2_chat_1_8b")
    assert capsys.readouterr().out.startswith("$ xtuner list-cfg -p llava_internlm2_chat_1_8b")
    assert "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune" in listed.stdout
    assert train.xtuner_command("chat")[0] == str(Path(sys.executable).parent / "xtuner")
    with pytest.raises(RunError, match=r"xtuner copy-cfg no_such_config .* failed \(exit status \d+\):\n.*Traceback"):
        train.xtuner("copy-cfg", "no_such_config", tmp_path, echo=False)
