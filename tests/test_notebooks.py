"""The book itself as a test: every notebook runs through the runner on the tiny profile,
the notebooks in git carry no outputs, and the site builds from the executed copies."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from layouts import assert_no_eval_in_train

from helpers import config, data

ROOT = Path(__file__).resolve().parents[1]


def test_notebooks_in_git_carry_no_outputs():
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.book", "strip", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_notebook_has_a_documented_parameters_cell():
    from helpers import book

    for nb in book.discover(ROOT / "notebooks"):
        names = set(book.parameter_names(nb))
        assert {"profile", "model_path", "data_path", "output_dir", "device", "seed"} <= names, nb.name


def test_every_notebook_has_the_learner_frame():
    """Costs first, the parameters explained, a summary, and exercises whose solutions stay hidden (one way)."""
    from helpers import book

    for path in book.discover(ROOT / "notebooks"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = ["".join(c["source"]) for c in cells]
        assert all(k in text[1] for k in ("Time to learn", "System requirements", "Cost")), path.name
        i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert cells[i - 1]["cell_type"] == "markdown" and text[i - 1].startswith("### Parameters"), path.name
        ex = next(i for i, t in enumerate(text) if "## Summary" in t and "## Exercises" in t)
        hidden = [
            c
            for c, t in zip(cells[ex:], text[ex:])
            if "hide-cell" in c["metadata"].get("tags", []) and t.startswith("# Solutions")
        ]
        assert len(hidden) == 1 and hidden[0]["cell_type"] == "code", path.name
        assert not any("{dropdown}" in t for t in text), f"{path.name}: solutions go in the hidden code cell"


@pytest.mark.notebooks
def test_the_whole_book_runs_on_the_tiny_profile(executed_book):
    build, out = executed_book / "notebooks", executed_book / "outputs"
    summary = json.loads((build / "run-summary.json").read_text())
    names = [r["notebook"] for r in summary["notebooks"]]
    expected = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert [Path(n).stem for n in names] == expected
    assert all(r["status"] == "ok" for r in summary["notebooks"])
    # what the notebooks promise to leave for the next ones
    assert (out / "env.json").exists()
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["validation_ok"] and stats["records"] == 46
    # training read splits/train.json, which holds no eval record and no eval photo (by path and by bytes)
    info = assert_no_eval_in_train(out)
    assert info["format"] == "clot_sample" and info["seed"] == 0 and info["eval"] == 14 >= data.MIN_EVAL
    source = data.resolve_layout(data.SAMPLE_DATA_DIR).file
    assert info["source"] == str(source) and info["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    trained = json.loads((out / "qlora" / "train_summary.json").read_text())
    assert trained["loss_last_fifth"] < trained["loss_first_fifth"] - 0.5, "the tiny QLoRA run clearly learned"
    assert trained["interrupted_at"] and trained["resumed_from"], "notebook 04 demonstrated the resume"
    assert (out / "merged" / "model.safetensors").exists() and (out / "comparison.md").exists()
    shots = [out / "demo" / f"demo-{split}.png" for split in ("eval", "train")]
    assert all(p.stat().st_size > 50_000 for p in shots), "notebook 08 photographed the demo in Chromium"
    # the tiny model memorises its training captions: character F-score against them rises clearly
    comparison = json.loads((out / "comparison.json").read_text())
    train = comparison["summary"]["train"]
    assert train["after"]["corpus_chrf"] > train["before"]["corpus_chrf"] + 20, train
    # notebook 10: XTuner's own convert_to_official.py and helpers.convert wrote the same tensors, up to bf16 rounding
    course = json.loads((out / "course_commands" / "comparison.json").read_text())
    tensors = course["tensor_comparison"]
    assert course["within_tolerance"] and tensors["max_diff_ulps"] <= course["tolerance_ulps"] == 2.0, tensors
    assert not (tensors["only_in_a"] or tensors["only_in_b"] or tensors["mismatched"]), tensors
    assert min(tensors["changed_from_base"].values()) > 0, "both conversions merged a trained adapter"
    assert course["course_vs_book_course_recipe"] == ["data_root"], course["course_vs_book_course_recipe"]
    # a fair comparison: three arms on the eval split, each with bootstrap intervals and diversity
    arms = comparison["eval_arms"]
    assert list(arms) == ["base, course prompt", "base, stronger prompt", "fine-tuned, course prompt"]
    for name, arm in arms.items():
        assert arm["n"] == comparison["summary"]["eval"]["n"], name
        for metric in ("corpus_chrf", "rouge_l"):
            iv = arm[metric]
            assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["resamples"] == 1000, (name, metric, iv)
        assert {"distinct_1", "distinct_2", "repetition"} <= set(arm), name
    assert len(comparison["forgetting"]) == 5
    # notebook 11: the LLaVA route through XTuner's own commands; the fine-tune learned, both stages converted
    llava_out = out / "llava"
    route = json.loads((llava_out / "summary.json").read_text())
    assert (llava_out / "hf_pretrain" / "projector").is_dir()
    converted = {p.name for p in (llava_out / "hf_finetune").iterdir()}
    assert {"projector", "llm_adapter", "visual_encoder_adapter"} <= converted, converted
    assert route["losses"]["finetune"][-1] < route["losses"]["finetune"][0] - 1.0, route["losses"]
    scores = route["scores"]
    assert scores["finetune"]["chrF vs reference"] > scores["pretrain"]["chrF vs reference"], scores
    assert all(len(t) == 3 for t in route["transcripts"].values()), "xtuner chat answered the three questions"

    # notebook 09: the course's FoodieQA conversion, a LoRA run and its QLoRA twin on the same split, merged
    foodie = json.loads((out / "foodieqa" / "summary.json").read_text())
    assert foodie["converted_records"] == 32 and foodie["split"] == {"train": 24, "eval": 8}, foodie
    assert foodie["lora"]["steps"] == foodie["qlora_twin"]["steps"] == 8, foodie
    assert all(0 < run["last_loss"] < 8 for run in (foodie["lora"], foodie["qlora_twin"])), foodie
    assert (Path(foodie["merged"]) / "model.safetensors").exists()
    assert set(foodie["scores"]) == {"eval", "train"}
    # notebook 12: ms-swift's sft, infer, export and Python API ran; its merged model loads in helpers.infer
    swift = json.loads((out / "swift" / "summary.json").read_text())
    assert all(c["returncode"] == 0 for c in swift["commands"].values()) and len(swift["commands"]) == 5
    assert swift["sft"]["steps"] >= 1 and swift["merged"]["same_names_as_base"], swift["merged"]
    assert swift["eval_answers_from_helpers_infer"] == 14 and swift["python_api"]["turns"] == 2
    assert "XTuner QLoRA, merged (notebook 07)" in swift["eval_arms"], list(swift["eval_arms"])
    import nbformat

    nb04 = nbformat.read(build / "04_qlora_training.ipynb", as_version=4)
    pngs = sum("image/png" in o.get("data", {}) for c in nb04.cells if c.cell_type == "code" for o in c.outputs)
    assert pngs >= 1, "the executed training notebook carries its loss figure"


@pytest.mark.notebooks
def test_a_sweep_trains_each_run_and_overlays_them(tmp_path):
    sweep = tmp_path / "sweep-lr.yaml"
    sweep.write_text(
        "base: {max_steps: 4, save_steps: 4, log_interval: 1, lora_r: 8, lora_alpha: 16}\n"
        "runs:\n  - {name: lr-small, lr: 0.001}\n  - {name: lr-large, lr: 0.01}\n"
    )
    out = tmp_path / "outputs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.book",
            "sweep",
            str(sweep),
            "--build-dir",
            str(tmp_path / "nb"),
            "-p",
            "output_dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    sweep_dir = out / "sweeps" / "sweep-lr"
    assert (sweep_dir / "loss_curves.png").stat().st_size > 10_000
    for name, lr in (("lr-small", 0.001), ("lr-large", 0.01)):
        recipe = config.Recipe.load(sweep_dir / name / "qlora" / "recipe.json")
        assert recipe.lr == lr and recipe.max_iters == 4 and recipe.lora_r == 8
    import nbformat

    nb = nbformat.read(tmp_path / "nb" / "05_loss_curves.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "lr-small" in text and "lr-large" in text, "notebook 05 overlaid both runs"
