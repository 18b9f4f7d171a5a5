"""The benchmark tools: the FLOPs formula, synthetic samples, the plain loop's data, and the page that quotes them."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import flops
import plot_train

from helpers import internvl, memory, tiny


def test_peak_flops_come_from_the_device_name():
    assert flops.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_bf16_flops("NVIDIA H200") == 989e12
    assert flops.peak_bf16_flops("Tesla T4") is None


def test_the_gpu_uuid_tells_machines_apart_or_is_none_without_one():
    import torch

    uuid = flops.gpu_uuid()
    if torch.cuda.is_available():
        assert uuid == str(torch.cuda.get_device_properties(0).uuid) and len(uuid) >= 32
    else:
        assert uuid is None


def test_training_flops_follow_the_written_formula():
    cfg = tiny.model_config("internvl2-2b")
    f = flops.training_flops_per_sample(cfg, text_tokens=193, tiles=7, lora_r=128)
    g = memory.parameter_groups(cfg)
    s = 193 + 7 * 256
    assert f["tokens"] == s == 1985
    assert f["llm_weights"] == s * 4 * g["llm_linear"]
    assert f["llm_lora"] == s * 6 * memory.lora_parameters(cfg, 128)
    assert f["llm_attention"] == 12 * 24 * s * s * 2048
    assert f["vision"] == 7 * 1025 * (2 * g["vision_model"] + 4 * 24 * 1025 * 1024)
    assert f["total"] == pytest.approx(
        sum(f[k] for k in ("llm_weights", "llm_lora", "llm_attention", "projector", "vision"))
    )
    assert 22e12 < f["total"] < 23.5e12  # about 6 x 1.9e9 parameters x 1,985 tokens, less the frozen weights' grads
    assert (
        flops.training_flops_per_sample(cfg, text_tokens=193, tiles=7, lora_r=128, checkpointing=False)["recompute"]
        == 0
    )
    assert flops.training_flops_per_sample(cfg, text_tokens=193, tiles=8, lora_r=128)["total"] > f["total"]


def test_synthetic_samples_all_have_one_length(tiny_model_dir, tmp_path):
    import synthetic

    info = synthetic.make(tiny_model_dir, tmp_path / "synth", samples=6, width=1344, height=896, caption_tokens=12)
    assert (
        info["tiles"] == 7
        and info["image_tokens"] == 7 * internvl.TilingSettings.from_config(tiny_model_dir).num_image_token
    )
    assert info["tokens_per_sample"] == info["tokens_per_sample_min"] > info["image_tokens"]
    records = json.loads((tmp_path / "synth" / "ex_cn.json").read_text(encoding="utf-8"))
    assert len(records) == 6 and all((tmp_path / "synth" / r["image"]).exists() for r in records)


def test_the_plain_loop_masks_everything_but_the_answers(tiny_model_dir):
    import bench_peft_loop
    from transformers import AutoTokenizer

    from helpers import SAMPLE_DATA_DIR

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    settings = internvl.TilingSettings.from_config(tiny_model_dir)
    samples = bench_peft_loop.load_samples(SAMPLE_DATA_DIR, tok, settings, max_length=6656)
    assert len(samples) == 32  # the training split
    s = samples[0]
    trained = s["labels"][s["labels"] != -100].tolist()
    assert tok.decode(trained).replace(" ", "").endswith("<|im_end|>")
    n_ctx = int((s["input_ids"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>")).sum())
    assert n_ctx == len(s["pixel_values"]) * settings.num_image_token
    batch = bench_peft_loop.collate(samples[:2], tok.pad_token_id)
    n = max(len(samples[0]["input_ids"]), len(samples[1]["input_ids"]))
    assert batch["input_ids"].shape == (2, n) and batch["tokens"] == int(batch["attention_mask"].sum())
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


PAGE = ROOT / "book" / "reference" / "training-benchmarks.md"
QUOTING = re.compile(r"`((?:train|llava|swift)-[\w.-]+\.json)`")


def _quoting_rows(page: Path) -> list[str]:
    return [
        line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("|") and QUOTING.search(line)
    ]


@pytest.mark.parametrize("page", [PAGE, ROOT / "book" / "guides" / "real-hardware.md"], ids=lambda p: p.stem)
def test_the_pages_quote_the_results_files(page: Path) -> None:
    rows = _quoting_rows(page)
    assert len(rows) >= 5
    if page == PAGE:
        assert len(rows) >= 9 and {"llava", "swift"} <= {QUOTING.search(r).group(1).split("-")[0] for r in rows}
    for row in rows:
        name = QUOTING.search(row).group(1)
        result = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
        cells = [c.strip().strip("*") for c in row.split("|")]
        assert f"{result['samples_per_second']:.2f}" in cells, (name, row)
        assert f"{result['peak_gpu_memory_gib']:.2f}" in cells, (name, row)


def test_the_figures_are_drawn_from_the_results_files(tmp_path):
    """plot_train redraws every figure the page shows, from the files the page quotes."""
    drawn = plot_train.draw_all(figures=tmp_path)
    names = sorted(p.name for p in drawn)
    assert names == ["training-h100.png", "training-h200-losses.png", "training-h200.png"]
    shown = set(re.findall(r"figures/(training-[\w-]+\.png)", PAGE.read_text(encoding="utf-8")))
    assert shown == set(names)
    for path in drawn:
        assert path.stat().st_size > 20_000 and (PAGE.parent / "figures" / path.name).exists()
    quoted = {m.group(1) for row in _quoting_rows(PAGE) for m in [QUOTING.search(row)]}
    for _, runs in plot_train.LOSSES_H200:
        assert {name for name, _ in runs} <= quoted
        assert all(r["losses"] for _, r in plot_train.load(runs))


def test_the_step_profiler_sums_what_the_operators_did(tmp_path):
    import step_profiler
    import torch

    a = torch.randn(256, 256)
    with step_profiler.profiled_step(tmp_path / "p.json"):
        for _ in range(20):
            a = torch.tanh(a @ a)
    summary = json.loads((tmp_path / "p.json").read_text())
    assert 0 < summary["device_busy_seconds"] <= summary["wall_seconds"] and 0 <= summary["idle_share"] < 1
    names = {row["name"]: row["calls"] for row in summary["top"]}
    assert names.get("aten::tanh") == 20 and ("aten::mm" in names or "aten::matmul" in names)
    assert "aten::tanh" in (tmp_path / "p.txt").read_text()
    with pytest.raises(ValueError, match="step >= 1"):
        step_profiler.StepProfilerHook(str(tmp_path / "q.json"), step=0)
    # overlapping and nested intervals count once: 0-20 and 30-40 microseconds
    assert step_profiler._union_seconds([(0, 10), (5, 20), (30, 40), (32, 35)]) == pytest.approx(30e-6)


def test_the_gpu_scripts_parse_and_install_carried_wheels_with_one_function(tmp_path):
    """The GPU scripts cannot run here; at least they must parse, and share one offline wheel install."""
    import subprocess

    scripts = sorted((ROOT / "benchmarks" / "gpu").glob("*.sh"))
    assert len(scripts) >= 6
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        if script.name != "common.sh":
            assert "pip install" not in script.read_text(), f"{script.name}: use wheels_into (common.sh)"
    wheel = tmp_path / "book_probe-1.0-py3-none-any.whl"  # a minimal valid wheel
    import zipfile

    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("book_probe.py", "X = 1\n")
        info = "book_probe-1.0.dist-info/"
        z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: book-probe\nVersion: 1.0\n")
        z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(info + "RECORD", "")
    run = 'source benchmarks/gpu/common.sh && wheels_into "$1" "$2"'
    ok = subprocess.run(["bash", "-c", run, "-", str(tmp_path / "site"), str(wheel)], cwd=ROOT)
    assert ok.returncode == 0 and (tmp_path / "site" / "book_probe.py").exists()
    bad = subprocess.run(["bash", "-c", run, "-", str(tmp_path / "site"), str(tmp_path / "none.whl")], cwd=ROOT)
    assert bad.returncode != 0


def test_the_book_benchmark_keeps_each_notebooks_time_and_memory():
    import bench_book

    summary = {
        "profile": "tiny",
        "notebooks": [
            {"notebook": "00_environment", "status": "ok", "seconds": 12.5, "peak_memory_mb": 310.0},
            {"notebook": "01_dataset", "status": "ok", "seconds": 20.0, "peak_memory_mb": 700.5},
        ],
    }
    result = bench_book.summarise(summary)
    assert result["total_seconds"] == 32.5 and result["max_peak_memory_mb"] == 700.5
    assert [r["notebook"] for r in result["notebooks"]] == ["00_environment", "01_dataset"]
    assert result["machine"]["cores"] and result["versions"]["torch"]
    summary["notebooks"][1]["status"] = "failed"
    with pytest.raises(SystemExit, match="not every notebook ran"):
        bench_book.summarise(summary)


def test_the_introduction_quotes_the_book_benchmark():
    """book/intro.md's per-notebook table is benchmarks/results/book-tiny-cpu.json, row by row."""
    result = json.loads((ROOT / "benchmarks" / "results" / "book-tiny-cpu.json").read_text())
    text = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [r["notebook"] for r in result["notebooks"]] == notebooks  # every notebook, measured
    for r in result["notebooks"]:
        assert f"| {r['notebook']} | {r['seconds']:.0f} | {r['peak_memory_mb'] / 1024:.1f} |" in text, r
    assert f"| total | {result['total_seconds']:.0f} |" in text
    assert f"at most {result['max_peak_memory_mb'] / 1024:.1f} GiB" in text
