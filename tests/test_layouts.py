"""Every dataset layout the book accepts runs notebooks 01-04, 06 and 07 (tiny profile, a short training).

The full tiny training runs once, on the bundled sample, in ``executed_book``
(tests/test_notebooks.py); here each other layout gets a copy of the sample
built by ``tests/layouts.py`` and a 16-iteration run, with notebook 02
answering 4 records per split.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from layouts import KINDS, assert_no_eval_in_train, build

from helpers import data

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_FORMAT = {"clot": "clot", "jsonl": "llava_jsonl", "foodieqa": "foodieqa"}
SHORT_RUN = {"max_steps": 16, "save_steps": 8, "log_interval": 4, "demo_interrupt": "false", "max_records": 4}


def test_the_layout_copies_are_the_real_layouts(tmp_path):
    clot = build("clot", tmp_path / "clot")
    assert sorted(p.name for p in clot.iterdir()) == ["ex_cn.json", "ex_images"]
    names = [p.name for p in (clot / "ex_images").iterdir()]
    assert len(names) == len(data.load_sample()) and all(len(n) == len("x" * 32 + ".jpg") for n in names)
    assert data.resolve_layout(clot).split_files == ()
    jsonl = build("jsonl", tmp_path / "jsonl")
    assert jsonl.suffix == ".jsonl" and data.load_dataset(jsonl)[0].image.startswith("pics/")
    foodie = build("foodieqa", tmp_path / "foodie")
    items = json.loads((foodie / "sivqa_tidy.json").read_text(encoding="utf-8"))
    assert {"question", "choices", "answer", "question_id", "food_meta"} <= set(items[0])
    assert isinstance(items[0]["answer"], str) and items[0]["food_meta"]["food_file"].startswith("images/")
    files = [i["food_meta"]["food_file"] for i in items]
    assert len(set(files)) < len(files), "as in FoodieQA, some photos have several questions"
    for kind, path in (("clot", clot), ("jsonl", jsonl), ("foodieqa", foodie)):
        assert data.load_dataset(path).format == EXPECTED_FORMAT[kind] and data.validate(path).ok


def test_a_photo_with_several_questions_stays_on_one_side_of_the_split(tmp_path):
    ds = data.load_dataset(build("foodieqa", tmp_path / "foodie"))
    for seed in range(5):
        train, evl = data.train_eval_split(ds, 0.2, seed)
        assert len(evl) >= round(0.2 * len(ds))
        assert not {r.image for r in train} & {r.image for r in evl}


def test_the_no_eval_in_train_check_catches_a_leak(tmp_path):
    out = tmp_path / "outputs"
    splits = data.prepare_splits(build("jsonl", tmp_path / "jsonl"), out / "splits")
    (out / "qlora").mkdir()
    (out / "qlora" / "recipe.json").write_text(json.dumps({"data_path": str(splits.train_file)}))
    assert_no_eval_in_train(out)
    leaked = splits.eval.image_path(splits.eval[0])
    copy = tmp_path / "renamed.jpg"  # the same photo under another name
    copy.write_bytes(leaked.read_bytes())
    records = json.loads(splits.train_file.read_text(encoding="utf-8"))
    records[0]["image"] = str(copy)
    splits.train_file.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(AssertionError, match="bytes are also in train.json"):
        assert_no_eval_in_train(out)
    records[0]["image"] = str(leaked)
    splits.train_file.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(AssertionError, match="eval photos trained on"):
        assert_no_eval_in_train(out)


@pytest.mark.notebooks
@pytest.mark.parametrize("kind", KINDS)
def test_the_workflow_notebooks_run_on_every_layout(kind, tmp_path, tiny_model_dir):
    data_path = build(kind, tmp_path / "data" / kind)
    out = tmp_path / "outputs"
    params = {"data_path": data_path, "output_dir": out, "model_path": tiny_model_dir, **SHORT_RUN}
    # the workflow's notebooks that read the data; 05 (loss curves), the demo (08) and the appendices run
    # in the whole-book test and read nothing of the layout
    only = "01,02,03,04,06,07"
    cmd = [sys.executable, "-m", "helpers.book", "run", "--only", only, "--build-dir", str(tmp_path / "nb")]
    for key, value in params.items():
        cmd += ["-p", key, str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, f"the runner failed on {kind}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    summary = json.loads((tmp_path / "nb" / "run-summary.json").read_text())
    assert [r["notebook"][:2] for r in summary["notebooks"]] == ["01", "02", "03", "04", "06", "07"]
    assert all(r["status"] == "ok" for r in summary["notebooks"])

    layout = data.resolve_layout(data_path)
    info = assert_no_eval_in_train(out)
    assert info["format"] == EXPECTED_FORMAT[kind] and info["seed"] == 0
    assert info["source"] == str(layout.file) and info["sha256"] == hashlib.sha256(layout.file.read_bytes()).hexdigest()
    assert info["eval"] >= data.MIN_EVAL and info["train"] + info["eval"] == len(data.load_dataset(data_path))
    # XTuner reads XTuner records: for FoodieQA, the converted question (with its choices) and the answer
    trained = json.loads((out / "splits" / "train.json").read_text(encoding="utf-8"))
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in trained)
    if kind == "foodieqa":
        assert "\nA. " in trained[0]["conversations"][0]["value"]
    assert json.loads((out / "qlora" / "train_summary.json").read_text())["iterations"] == 16

    baseline = json.loads((out / "baseline_answers.json").read_text(encoding="utf-8"))["answers"]
    assert {r["id"] for r in baseline if r["split"] == "eval"} <= set(info["eval_ids"])
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert {len(rows) for rows in comparison["rows"].values()} == {4}, "07 compared the records 02 answered"
