"""FoodieQA: the release's schema, the bundled sample, the course's converter and its error messages."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from helpers import REPO_DIR, data
from helpers.errors import DatasetError

SAMPLE = REPO_DIR / "helpers" / "sample_data" / "foodieqa_sample"

# One sivqa item exactly as the FoodieQA authors document it (lyan62/FoodieQA, val-ui/README_Validation.md,
# "Single-image VQA"; `question_en`/`choices_en` are read by model-eval/scripts/sivqa_utils.py). Typed in
# by hand from that page, not built with helpers.data, so that it pins the schema from outside.
RELEASE_ITEM = {
    "question": "图片中的食物通常属于哪个菜系?",
    "choices": ["京菜", "徽菜", "新疆菜", "桂菜"],
    "answer": "2",
    "question_type": "cuisine_type",
    "food_name": "大盘鸡",
    "question_id": "vqa-0",
    "food_meta": {
        "main_ingredient": ["鸡肉", "土豆"],
        "id": 217,
        "food_name": "大盘鸡",
        "food_type": "新疆菜",
        "food_location": "餐馆",
        "food_file": "dapanji.jpg",
    },
    "question_en": "Which cuisine does the food in the picture usually belong to?",
    "choices_en": ["Beijing", "Anhui", "Xinjiang", "Guangxi"],
}


def _flat_keys(item: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in item.items():
        out += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return out


def _release_folder(folder: Path, items: list[dict]) -> Path:
    (folder / "images").mkdir(parents=True)
    shutil.copy(SAMPLE / "images" / "coffee.jpg", folder / "images" / "dapanji.jpg")
    (folder / data.FOODIE_FILE).write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    return folder


def test_schema_is_the_releases():
    assert _flat_keys(RELEASE_ITEM) == list(data.FOODIE_FIELDS)
    built = data.foodie_item(
        question="q", choices=["a", "b"], answer=1, food_name="n", food_file="images/x.jpg", question_id="i"
    )
    assert _flat_keys(built) == list(data.FOODIE_FIELDS)
    assert built["answer"] == "1"  # a string, as in the release
    assert set(data.FOODIE_NEEDED_BY_COURSE) <= set(data.FOODIE_FIELDS)
    with pytest.raises(DatasetError, match="answer=2"):
        data.foodie_item(question="q", choices=["a", "b"], answer=2, food_name="n", food_file="f", question_id="i")


def test_bundled_sample_is_in_the_release_layout():
    assert {p.name for p in SAMPLE.iterdir()} >= {"sivqa_tidy.json", "mivqa_tidy.json", "textqa_tidy.json", "images"}
    items = json.loads((SAMPLE / data.FOODIE_FILE).read_text(encoding="utf-8"))
    assert 20 <= len(items) <= 40
    for item in items:
        assert _flat_keys(item) == list(data.FOODIE_FIELDS)
        assert (SAMPLE / item["food_meta"]["food_file"]).is_file()
    assert len({i["question_id"] for i in items}) == len(items)
    assert data.validate(SAMPLE).ok
    assert data.load_dataset(SAMPLE).format == "foodieqa"
    # every photo has its source and licence recorded
    sources = (SAMPLE / "SOURCES.md").read_text(encoding="utf-8")
    for image in (SAMPLE / "images").iterdir():
        assert f"`images/{image.name}`" in sources


def test_sample_is_what_the_tool_writes():
    spec = importlib.util.spec_from_file_location("make_foodie_sample", REPO_DIR / "tools" / "make_foodie_sample.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for name, content in tool.files().items():
        assert (SAMPLE / name).read_bytes() == content, name


def test_split_holds_out_whole_photos(tmp_path: Path):
    splits = data.prepare_splits(SAMPLE, tmp_path)
    train_images = {r.image for r in splits.train}
    eval_images = {r.image for r in splits.eval}
    assert not train_images & eval_images
    assert len(splits.eval) >= data.MIN_EVAL and len(splits.train) + len(splits.eval) == 32
    assert splits.info["eval_ids"] == data.prepare_splits(SAMPLE, tmp_path / "again").info["eval_ids"]


def test_converter_does_what_process_food_does(tmp_path: Path):
    folder = _release_folder(tmp_path / "FoodieQA", [RELEASE_ITEM])
    out = data.foodie_to_llava(folder)  # the course's place: beside sivqa_tidy.json
    assert out == folder / data.COURSE_FOODIE_FILE
    (record,) = json.loads(out.read_text(encoding="utf-8"))
    assert record == {
        "id": "vqa-0",
        "image": "images/dapanji.jpg",  # a bare file name is found in images/
        "conversations": [
            {"from": "human", "value": "图片中的食物通常属于哪个菜系?\n<image>"},
            {"from": "gpt", "value": "新疆菜，图中的菜是大盘鸡"},
        ],
    }
    ds = data.load_dataset(out)  # XTuner's LLaVA JSON, not FoodieQA, despite the sivqa_ name
    assert ds.format == "llava_json" and ds[0].caption == "新疆菜，图中的菜是大盘鸡"
    assert data.validate(out).ok


def test_converter_on_the_sample_elsewhere(tmp_path: Path):
    out = data.foodie_to_llava(SAMPLE, tmp_path / "converted" / "sivqa_llava.json")
    records = json.loads(out.read_text(encoding="utf-8"))
    items = json.loads((SAMPLE / data.FOODIE_FILE).read_text(encoding="utf-8"))
    assert len(records) == len(items) == 32
    for record, item in zip(records, items):
        assert Path(record["image"]).is_absolute() and Path(record["image"]).is_file()
        assert record["conversations"][0]["value"] == item["question"] + "\n<image>"
        answer = item["choices"][int(item["answer"])]
        assert record["conversations"][1]["value"] == f"{answer}，图中的菜是{item['food_meta']['food_name']}"
    assert data.validate(out).ok


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("food_meta.food_name", lambda item: item["food_meta"].pop("food_name")),
        ("question", lambda item: item.pop("question")),
        ("answer", lambda item: item.update(answer="9")),
        ("choices", lambda item: item.update(choices=[])),
    ],
)
def test_converter_names_file_record_and_field(tmp_path: Path, field: str, edit):
    bad = json.loads(json.dumps(RELEASE_ITEM))
    edit(bad)
    folder = _release_folder(tmp_path / "FoodieQA", [RELEASE_ITEM, bad])
    with pytest.raises(DatasetError) as err:
        data.foodie_to_llava(folder)
    message = str(err.value)
    assert f"sivqa_tidy.json:{data.record_start_lines((folder / data.FOODIE_FILE).read_text())[1]}" in message
    assert f"record 1 `{field}`" in message and "record 0" not in message
    assert not (folder / data.COURSE_FOODIE_FILE).exists(), "nothing is written when an item is bad"


def test_converter_and_validator_name_a_missing_image(tmp_path: Path):
    gone = json.loads(json.dumps(RELEASE_ITEM))
    gone["food_meta"]["food_file"] = "images/gone.jpg"
    folder = _release_folder(tmp_path / "FoodieQA", [gone, RELEASE_ITEM])
    with pytest.raises(DatasetError, match=r"record 0 `food_meta.food_file` \[image_not_found\]"):
        data.foodie_to_llava(folder)
    report = data.validate(folder)
    assert [(p.kind, p.index, p.field) for p in report.problems] == [("image_not_found", 0, "food_meta.food_file")]


def test_converter_refuses_other_layouts():
    with pytest.raises(DatasetError, match="not FoodieQA"):
        data.foodie_to_llava(data.SAMPLE_DATA_DIR)


def test_training_refuses_an_unconverted_foodieqa_file(tmp_path: Path):
    folder = _release_folder(tmp_path / "FoodieQA", [RELEASE_ITEM])
    with pytest.raises(DatasetError, match="foodie_to_llava"):
        data.check_training_data(folder / data.FOODIE_FILE, str(folder), "/no/model", 8192)
