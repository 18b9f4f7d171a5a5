"""Tests for helpers.data: loaders, the validator (one test per bad-input kind), stats, converters,
and the bundled sample dataset."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from helpers import REPO_DIR, SAMPLE_DATA_DIR, data, internvl
from helpers.errors import DatasetError
from helpers.tiling import image_token_count

PROMPT = internvl.COURSE_PROMPT


class CharTokenizer:
    """A stand-in tokenizer: one token per character, with a BOS id like InternLM2's."""

    bos_token_id = 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def rec(image: object = "ex_images/a.jpg", human: str = PROMPT, gpt: str = "梗", **extra: object) -> dict:
    """A well-formed CLoT record (override any part to break it)."""
    out = {"image": image, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}
    out.update(extra)
    return out


def make_images(root: Path, names: tuple[str, ...] = ("a.jpg", "b.jpg"), size: tuple[int, int] = (448, 448)) -> None:
    (root / "ex_images").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size, (200, 120, 40)).save(root / "ex_images" / name)


def write_records(path: Path, records: list) -> Path:
    """One record per line, so record i starts on line i + 2."""
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_images(tmp_path)
    return tmp_path


def only(report: data.ValidationReport, kind: str) -> data.Problem:
    assert [p.kind for p in report.problems] == [kind], str(report)
    return report.problems[0]


# ---------------------------------------------------------------------------------------------
# the bundled sample


def test_sample_validates_clean_in_every_split():
    for split in (None, "train", "eval"):
        report = data.validate(SAMPLE_DATA_DIR, split=split)
        assert report.ok, str(report)
    assert data.validate(data.load_sample()).ok


def test_sample_sizes_and_disjoint_splits():
    train, evl, everything = data.load_sample("train"), data.load_sample("eval"), data.load_sample()
    assert (len(train), len(evl), len(everything)) == (32, 14, 46)
    assert {r.id for r in train}.isdisjoint({r.id for r in evl})
    assert {r.image for r in train}.isdisjoint({r.image for r in evl})
    assert [r.to_dict() for r in everything] == [r.to_dict() for r in train] + [r.to_dict() for r in evl]


def test_sample_folder_contents():
    images = sorted((SAMPLE_DATA_DIR / "ex_images").glob("*.jpg"))
    assert len(images) >= 36
    assert {f"ex_images/{p.name}" for p in images} == {r.image for r in data.load_sample()}
    total = sum(p.stat().st_size for p in SAMPLE_DATA_DIR.rglob("*") if p.is_file())
    assert total < 3_000_000
    for path in images:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 640
    sources = (SAMPLE_DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for record in data.load_sample():
        assert record.image in sources and record.caption in sources
        assert record.prompt == PROMPT


def test_sample_captions_are_short_distinct_and_chinese():
    captions = [r.caption for r in data.load_sample()]
    assert len(set(captions)) == len(captions)
    assert all(8 <= len(c) <= 40 for c in captions)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in c) for c in captions)


def test_sample_aspect_ratios_vary():
    ratios = [row["width"] / row["height"] for row in data.token_counts(data.load_sample())]
    assert min(ratios) < 0.4 and max(ratios) > 5  # very tall and very wide crops
    assert {row["tiles"] for row in data.token_counts(data.load_sample())} >= {1, 5, 7, 13}


# The eval split is held out: other photos than the training ones, not crops or sources of them.
# Besides names, sources and file hashes, two perceptual checks compare every eval image with every
# training image through a 16x16 grayscale thumbnail (the whole image squeezed to 16x16, so aspect
# ratio and resolution do not matter):
# - an average hash (256 bits: pixel above the thumbnail's mean), compared by Hamming distance;
# - the correlation of the two thumbnails (each made zero-mean, unit-norm).
# Measured on this sample: a re-encoded (JPEG q40), 3x smaller, brighter, lower-contrast or gray copy
# of any sample image stays within 20 bits and above 0.95 correlation of the original (the test below
# checks that these copies are caught), while the closest two *different* sample images are 34 bits
# apart (kite vs toy_bird) and correlate at most 0.78 (toy_bird vs dandelions). The thresholds sit in
# those gaps. Neither catches a small crop of a training photo (a crop changes the thumbnail
# completely): that relation is ruled out through SOURCES.md, where no eval image's source is a
# training image's source.
AHASH_MIN_BITS = 26
THUMB_MAX_CORR = 0.9


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=float).ravel()


def _near_duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 16x16 thumbnails look like the same picture, by either perceptual check."""
    bits = int(((a > a.mean()) != (b > b.mean())).sum())
    za, zb = a - a.mean(), b - b.mean()
    corr = float(za @ zb / ((np.linalg.norm(za) * np.linalg.norm(zb)) or 1.0))
    return bits < AHASH_MIN_BITS or corr > THUMB_MAX_CORR


def _split_paths(split: str) -> list[Path]:
    return [SAMPLE_DATA_DIR / r.image for r in data.load_sample(split)]


def _sources_rows() -> dict[str, tuple[str, str, str]]:
    """SOURCES.md table rows: image -> (split, source path in its package, crop-box cell)."""
    rows = {}
    for line in (SAMPLE_DATA_DIR / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `ex_images/"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            image = cells[0].strip("`")
            rows[image] = (cells[1], re.search(r"`([^`]+)`", cells[2]).group(1), cells[3])
    return rows


def test_eval_split_is_held_out_by_name_source_and_hash():
    train, evl = _split_paths("train"), _split_paths("eval")
    assert len(evl) >= 12
    assert {p.name for p in train}.isdisjoint({p.name for p in evl})
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert {digest(p) for p in train}.isdisjoint({digest(p) for p in evl})
    rows = _sources_rows()
    assert set(rows) == {f"ex_images/{p.name}" for p in train + evl}
    train_sources = {rows[f"ex_images/{p.name}"][1] for p in train}
    eval_rows = [rows[f"ex_images/{p.name}"] for p in evl]
    assert all(split == "eval" for split, _, _ in eval_rows)
    eval_sources = [source for _, source, _ in eval_rows]
    assert len(set(eval_sources)) == len(eval_sources)  # distinct photos, not crops of one another
    train_names = {Path(s).name for s in train_sources}
    for source, (_, _, box) in zip(eval_sources, eval_rows):
        assert source not in train_sources and Path(source).name not in train_names, source
        assert box == "full photo" or box.startswith(f"crop of `{Path(source).name}`"), box


def test_eval_split_is_held_out_perceptually():
    train = {p.name: _thumb(Image.open(p)) for p in _split_paths("train")}
    for path in _split_paths("eval"):
        thumb = _thumb(Image.open(path))
        near = [name for name, other in train.items() if _near_duplicate(thumb, other)]
        assert not near, f"{path.name} looks like training image(s) {near}"


def test_perceptual_check_catches_altered_copies():
    """The thresholds are not vacuous: altered copies of sample images are flagged."""
    for path in _split_paths("eval")[:4] + _split_paths("train")[:4]:
        with Image.open(path) as raw:
            image = raw.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=40)
        copies = [
            Image.open(buffer),
            image.resize((max(1, image.width // 3), max(1, image.height // 3))),
            ImageEnhance.Brightness(image).enhance(1.3),
            ImageEnhance.Contrast(image).enhance(0.7),
            image.convert("L"),
        ]
        for copy in copies:
            assert _near_duplicate(_thumb(copy), _thumb(image)), path.name


def _generator():
    spec = importlib.util.spec_from_file_location("make_sample_data", REPO_DIR / "tools" / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_generator_is_deterministic_and_matches_committed(tmp_path: Path):
    gen = _generator()
    gen.build(tmp_path / "one")
    gen.build(tmp_path / "two")
    assert gen.differences(tmp_path / "one", tmp_path / "two") == []
    for name in ("train.json", "eval.json", "ex_cn.json", "SOURCES.md"):
        assert (tmp_path / "one" / name).read_bytes() == (SAMPLE_DATA_DIR / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# loaders


def test_load_fake_clot_folder(root: Path):
    write_records(root / "ex_cn.json", [rec("ex_images/a.jpg"), rec("ex_images/b.jpg", gpt="另一个梗")])
    ds = data.load_dataset(root)
    assert ds.format == "clot" and len(ds) == 2
    assert ds[1].id == "b" and ds[1].caption == "另一个梗" and ds[1].line == 3
    assert ds.image_path(ds[0]) == (root / "ex_images" / "a.jpg").resolve()
    with pytest.raises(DatasetError, match="train_eval_split"):
        data.load_dataset(root, split="train")
    assert data.validate(root).ok


def test_load_jsonl_file(root: Path):
    lines = [
        json.dumps(rec("ex_images/a.jpg", id="x1"), ensure_ascii=False),
        "",
        json.dumps(rec("ex_images/b.jpg", id="x2"), ensure_ascii=False),
    ]
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = data.load_dataset(path)
    assert ds.format == "llava_jsonl" and [r.id for r in ds] == ["x1", "x2"]
    assert [r.line for r in ds] == [1, 3]
    assert ds.root == root.resolve()


def test_load_json_file_with_image_list(root: Path):
    path = write_records(root / "train.json", [rec(["ex_images/a.jpg"])])
    ds = data.load_dataset(path)
    assert ds.format == "llava_json" and ds[0].image == "ex_images/a.jpg"


def make_foodie(folder: Path) -> Path:
    """Minimal files shaped like the FoodieQA hub dataset: sivqa_tidy.json + images/."""
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (80, 60), (90, 60, 30)).save(folder / "images" / "mapo.jpeg")
    items = [
        data.foodie_item(
            question="图片中的食物通常属于哪个菜系?",
            choices=["川菜", "粤菜", "鲁菜", "苏菜"],
            answer=0,
            question_type="cuisine_type",
            food_name="麻婆豆腐",
            question_id="sivqa_1",
            main_ingredient=["豆腐"],
            food_id=12,
            food_type="tofu",
            food_location="餐馆",
            food_file="images/mapo.jpeg",
            question_en="Which cuisine does the food in the picture usually belong to?",
            choices_en=["Sichuan", "Cantonese", "Shandong", "Jiangsu"],
        )
    ]
    path = folder / "sivqa_tidy.json"
    path.write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    (folder / "mivqa_tidy.json").write_text("[]", encoding="utf-8")
    (folder / "textqa_tidy.json").write_text("[]", encoding="utf-8")
    return path


def test_load_fake_foodieqa(tmp_path: Path):
    path = make_foodie(tmp_path / "FoodieQA")
    for where in (tmp_path / "FoodieQA", path, tmp_path):  # folder, the file, a snapshot one level up
        ds = data.load_dataset(where)
        assert ds.format == "foodieqa" and len(ds) == 1
        record = ds[0]
        assert record.id == "sivqa_1" and record.image == "images/mapo.jpeg"
        assert record.prompt.startswith("<image>\n图片中的食物通常属于哪个菜系?")
        assert "A. 川菜" in record.prompt and "D. 苏菜" in record.prompt
        assert record.caption == "川菜"
    assert data.validate(tmp_path / "FoodieQA").ok


def test_foodieqa_bad_items_and_missing_image(tmp_path: Path):
    path = make_foodie(tmp_path)
    items = json.loads(path.read_text(encoding="utf-8"))
    items.append(dict(items[0], answer="7"))
    items.append(dict(items[0], food_meta={"food_file": "images/gone.jpeg"}))
    path.write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    report = data.validate(tmp_path)
    assert [(p.kind, p.index, p.field) for p in report.problems] == [
        ("bad_foodie_item", 1, "answer"),
        ("image_not_found", 2, "food_meta.food_file"),
    ]
    assert report.problems[0].line == data.record_start_lines(path.read_text(encoding="utf-8"))[1]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p / "missing",
        lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt",
        lambda p: (p / "junk").mkdir() or ((p / "junk" / "x.csv").write_text("a") and p / "junk"),
    ],
)
def test_unknown_layout_lists_accepted_layouts(tmp_path: Path, make):
    path = make(tmp_path)
    with pytest.raises(DatasetError) as err:
        data.load_dataset(path)
    message = str(err.value)
    assert str(path) in message and "Accepted layouts" in message
    for layout in data.LAYOUTS:
        assert layout in message


def test_bad_split_and_split_on_a_file(root: Path):
    path = write_records(root / "x.json", [rec()])
    with pytest.raises(DatasetError, match="split"):
        data.load_dataset(path, split="train")
    with pytest.raises(DatasetError, match="'test'"):
        data.load_dataset(SAMPLE_DATA_DIR, split="test")


def test_load_refuses_unparseable_file_and_points_to_validate(root: Path):
    (root / "ex_cn.json").write_text('[{"image": "a.jpg",}]', encoding="utf-8")
    with pytest.raises(DatasetError, match="validate"):
        data.load_dataset(root)


def test_train_eval_split_is_disjoint_and_deterministic():
    ds = data.load_sample()
    a_train, a_eval = data.train_eval_split(ds, 0.25, seed=3)
    _, b_eval = data.train_eval_split(ds, 0.25, seed=3)
    assert [r.id for r in a_eval] == [r.id for r in b_eval] and len(a_eval) == 12  # round(46 * 0.25)
    assert {r.id for r in a_train}.isdisjoint({r.id for r in a_eval})
    assert len(a_train) + len(a_eval) == len(ds)
    with pytest.raises(DatasetError):
        data.train_eval_split(ds, 1.5)


def test_train_eval_split_keeps_each_photo_on_one_side(tmp_path: Path):
    sample = data.load_sample()
    shutil.copytree(data.SAMPLE_DATA_DIR / "ex_images", tmp_path / "ex_images")
    records = [r.to_dict() for r in sample]
    # FoodieQA-like: a second question about every photo, and one photo copied under another name
    records += [{**r.to_dict(), "id": f"{r.id}_again"} for r in sample]
    shutil.copy(tmp_path / sample[0].image, tmp_path / "ex_images" / "copy.jpg")
    records.append({**sample[0].to_dict(), "id": "copy", "image": "ex_images/copy.jpg"})
    ds = data.load_dataset(write_records(tmp_path / "ex_cn.json", records))
    for seed in range(4):
        train, evl = data.train_eval_split(ds, 0.1, seed)
        assert len(evl) >= round(0.1 * len(ds)) and len(train) + len(evl) == len(ds)
        photos = [{(tmp_path / r.image).read_bytes() for r in part} for part in (train, evl)]
        assert photos[0].isdisjoint(photos[1]), seed
    # one record per photo: exactly the record-level split of before (the same seed holds out the same records)
    _, evl = data.train_eval_split(sample, 0.25, seed=3)
    order = list(range(len(sample)))
    random.Random(3).shuffle(order)
    assert [r.id for r in evl] == [sample[i].id for i in sorted(order[:12])]


def test_record_start_lines_handles_tricky_strings():
    text = '[\n  {"a": "[,]{\\n}", "b": [1,\n 2]},\n\n  "x",\n  [\n  ]\n]'
    assert data.record_start_lines(text) == [2, 5, 6]
    assert data.record_start_lines("[]") == []


# ---------------------------------------------------------------------------------------------
# validation: one test per kind of bad input


def test_malformed_json(root: Path):
    path = root / "ex_cn.json"
    bad_line = '{"image": "ex_images/b.jpg" "conversations": []}'
    path.write_text('[\n{"image": "ex_images/a.jpg", "conversations": []},\n' + bad_line + "\n]\n", encoding="utf-8")
    p = only(data.validate(root), "malformed_json")
    assert (p.file, p.line, p.column) == (path, 3, bad_line.index('"conv') + 1)
    assert "delimiter" in p.message and p.fix


def test_bom_is_explained(root: Path):
    (root / "ex_cn.json").write_bytes(b"\xef\xbb\xbf[]")
    assert "byte-order mark" in only(data.validate(root), "malformed_json").fix


def test_not_utf8(root: Path):
    path = root / "ex_cn.json"
    good = json.dumps(rec(), ensure_ascii=False).encode()
    prefix = b'{"image": "ex_images/b.jpg", "note": "'
    path.write_bytes(b"[\n" + good + b",\n" + prefix + "梗".encode("gbk") + b'"}\n]')
    p = only(data.validate(root), "not_utf8")
    assert p.file == path and p.line == 3 and p.column == len(prefix) + 1
    assert "byte" in p.message and "UTF-8" in p.fix


def _sample_bytes(root: Path) -> bytes:
    """A pretty-printed (indent 2) UTF-8 ex_cn.json of three records, as bytes."""
    make_images(root, ("a.jpg", "b.jpg", "c.jpg"))
    records = [rec(f"ex_images/{n}.jpg", gpt=f"第{i}个梗：住手！") for i, n in enumerate("abc")]
    return json.dumps(records, ensure_ascii=False, indent=2).encode("utf-8")


def test_truncated_at_a_line_boundary(root: Path):
    path = root / "ex_cn.json"
    full = _sample_bytes(root)
    lines = full.split(b"\n")
    cut = b"\n".join(lines[:20]) + b"\n"  # a copy that stopped after line 20
    path.write_bytes(cut)
    p = only(data.validate(root), "truncated")
    assert (p.file, p.line) == (path, 20)
    assert p.message == f"{path} ends early at line 20 (the file is probably truncated: was it copied completely?)"
    assert str(len(cut)) in p.fix
    with pytest.raises(DatasetError, match="ends early at line 20"):
        data.load_dataset(root)


def test_truncated_inside_a_multibyte_character(root: Path):
    path = root / "ex_cn.json"
    full = _sample_bytes(root)
    at = full.index("住".encode()) + 1  # keep the first of its three bytes only
    path.write_bytes(full[:at])
    p = only(data.validate(root), "truncated")
    line = full[:at].count(b"\n") + 1
    assert (p.file, p.line) == (path, line)
    assert f"ends early at line {line} (the file is probably truncated" in p.message
    assert "UTF-8" not in p.message and "iconv" not in p.fix


def test_truncated_last_jsonl_line(root: Path):
    path = root / "d.jsonl"
    text = json.dumps(rec(), ensure_ascii=False) + "\n" + json.dumps(rec("ex_images/b.jpg"), ensure_ascii=False)
    path.write_text(text[:-12], encoding="utf-8")
    p = only(data.validate(path), "truncated")
    assert p.line == 2 and "ends early at line 2" in p.message


def test_missing_comma_inside_the_file_is_not_truncated(root: Path):
    path = root / "ex_cn.json"
    path.write_text('[\n{"image": "ex_images/a.jpg"}\n{"image": "ex_images/b.jpg"}\n]\n', encoding="utf-8")
    p = only(data.validate(root), "malformed_json")
    assert p.line == 3 and "comma" in p.fix


def test_real_gbk_file_suggests_iconv_from_gbk(root: Path):
    path = root / "ex_cn.json"
    text = json.dumps([rec(), rec("ex_images/b.jpg")], ensure_ascii=False, indent=2)
    path.write_bytes(text.encode("gbk"))
    p = only(data.validate(root), "not_utf8")
    assert "iconv -f GBK -t UTF-8" in p.fix and p.line is not None
    assert f"on line {p.line}" in p.message and "byte" in p.message


def test_random_invalid_bytes_do_not_suggest_gbk(root: Path):
    path = root / "ex_cn.json"
    good = json.dumps(rec(), ensure_ascii=False).encode()
    path.write_bytes(b"[\n" + good + b",\n" + b'{"image": "\xff\x80\xfe\xff"}\n]\n')
    p = only(data.validate(root), "not_utf8")
    assert p.line == 3 and p.column == len(b'{"image": "') + 1
    assert "byte " in p.message and "0xff" in p.message and "on line 3" in p.message
    assert "GBK" not in p.fix.replace("not GBK", "") and "re-save the file as UTF-8" in p.fix


def test_problem_kinds_document_every_kind_and_warnings_are_known():
    assert "truncated" in data.PROBLEM_KINDS and set(data.PROBLEM_KINDS) >= data.WARNING_KINDS


def test_top_level_not_list(root: Path):
    (root / "ex_cn.json").write_text('{"records": []}', encoding="utf-8")
    p = only(data.validate(root), "top_level_not_list")
    assert p.line == 1 and "dict" in p.message


def test_record_not_object(root: Path):
    path = write_records(root / "ex_cn.json", [rec(), "ex_images/b.jpg", rec("ex_images/b.jpg")])
    p = only(data.validate(root), "record_not_object")
    assert (p.file, p.index, p.line) == (path, 1, 3)


def test_missing_or_empty_image_field(root: Path):
    no_image = rec()
    del no_image["image"]
    write_records(root / "ex_cn.json", [rec(), no_image, rec(""), rec(["ex_images/a.jpg", "ex_images/b.jpg"])])
    report = data.validate(root)
    assert [(p.kind, p.index, p.line, p.field) for p in report.problems] == [
        ("missing_image_field", 1, 3, "image"),
        ("missing_image_field", 2, 4, "image"),
        ("missing_image_field", 3, 5, "image"),
    ]
    assert "missing" in report.problems[0].message


def test_image_not_found(root: Path):
    write_records(root / "ex_cn.json", [rec(), rec("ex_images/gone.jpg")])
    p = only(data.validate(root), "image_not_found")
    assert (p.index, p.line, p.field) == (1, 3, "image") and "gone.jpg" in p.message


def test_image_unreadable_garbage_and_truncated(root: Path):
    (root / "ex_images" / "garbage.jpg").write_bytes(b"this is not a JPEG")
    whole = root / "ex_images" / "whole.jpg"
    Image.effect_noise((300, 300), 60).convert("RGB").save(whole, quality=90)
    (root / "ex_images" / "cut.jpg").write_bytes(whole.read_bytes()[:2000])
    write_records(
        root / "ex_cn.json", [rec("ex_images/garbage.jpg"), rec("ex_images/whole.jpg"), rec("ex_images/cut.jpg")]
    )
    report = data.validate(root)
    assert [(p.kind, p.index, p.field) for p in report.problems] == [
        ("image_unreadable", 0, "image"),
        ("image_unreadable", 2, "image"),
    ]
    assert "truncated" in report.problems[1].message


def test_missing_image_token(root: Path):
    write_records(root / "ex_cn.json", [rec(), rec(human="请你根据这张图片，讲一个脑洞大开的梗")])
    p = only(data.validate(root), "missing_image_token")
    assert (p.index, p.line, p.field) == (1, 3, "conversations[0].value")


def test_extra_image_token(root: Path):
    in_gpt = rec(gpt="<image> 梗")
    write_records(root / "ex_cn.json", [rec(human="<image>\n<image>\n讲个梗"), in_gpt])
    report = data.validate(root)
    assert [(p.kind, p.index, p.field) for p in report.problems] == [
        ("extra_image_token", 0, "conversations[0].value"),
        ("extra_image_token", 1, "conversations[1].value"),
    ]


def test_empty_conversations(root: Path):
    missing = rec()
    del missing["conversations"]
    write_records(root / "ex_cn.json", [dict(rec(), conversations=[]), missing, dict(rec(), conversations="hi")])
    report = data.validate(root)
    assert [(p.kind, p.index, p.line, p.field) for p in report.problems] == [
        ("empty_conversations", i, i + 2, "conversations") for i in range(3)
    ]


def test_bad_roles(root: Path):
    def convo(*turns):
        return dict(rec(), conversations=[{"from": f, "value": v} for f, v in turns])

    write_records(
        root / "ex_cn.json",
        [
            convo(("gpt", "梗"), ("human", PROMPT)),  # starts with gpt
            convo(("human", PROMPT), ("human", "再来"), ("gpt", "梗")),  # not alternating
            convo(("human", PROMPT), ("gpt", "梗"), ("human", "再来")),  # ends with human
            convo(("user", PROMPT), ("assistant", "梗")),  # wrong role names
        ],
    )
    report = data.validate(root)
    bad = report.by_kind("bad_roles")
    assert [(p.index, p.field) for p in bad] == [
        (0, "conversations[0].from"),
        (1, "conversations[1].from"),
        (2, "conversations[2].from"),
        (3, "conversations[0].from"),
    ]
    assert "user, assistant" in bad[3].message


def test_empty_turn(root: Path):
    write_records(
        root / "ex_cn.json",
        [rec(gpt="   "), dict(rec(), conversations=[{"from": "human", "value": PROMPT}, {"from": "gpt"}])],
    )
    report = data.validate(root)
    assert [(p.kind, p.index, p.field) for p in report.problems] == [
        ("empty_turn", 0, "conversations[1].value"),
        ("empty_turn", 1, "conversations[1].value"),
    ]


def test_too_long_counts_text_and_image_tokens(root: Path):
    Image.new("RGB", (900, 450)).save(root / "ex_images" / "wide.jpg")  # 2x1 grid + thumbnail = 3 tiles
    write_records(root / "ex_cn.json", [rec("ex_images/a.jpg"), rec("ex_images/wide.jpg")])
    tok = CharTokenizer()
    counts = data.token_counts(data.load_dataset(root), tok)
    assert counts[1]["tiles"] == 3 and counts[1]["image_tokens"] == 3 * 256 + 2
    limit = counts[1]["total"] - 1
    assert counts[0]["total"] <= limit
    p = only(data.validate(root, tokenizer=tok, max_length=limit), "too_long")
    assert (p.index, p.line, p.field) == (1, 3, "conversations")
    assert f"max_length is {limit}" in p.message and "3 tiles" in p.message
    assert data.validate(root, tokenizer=tok, max_length=counts[1]["total"]).ok
    report = data.validate(root, tokenizer=tok, max_length=limit)
    assert report.warnings == [p] and report.errors == [] and report.raise_if_errors() is report
    assert "(all warnings)" in report.summary()
    with pytest.raises(DatasetError, match="tokenizer"):
        data.validate(root, max_length=10)


def test_jsonl_reports_every_broken_line(root: Path):
    path = root / "d.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(rec()),
                "{broken",
                json.dumps(rec("ex_images/gone.jpg")),
                '{"image": }',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    report = data.validate(path)
    assert [(p.kind, p.line, p.index) for p in report.problems] == [
        ("malformed_json", 2, None),
        ("malformed_json", 4, None),
        ("image_not_found", 3, 1),
    ]


def test_all_problems_reported_together_and_files_untouched(root: Path):
    no_image = rec()
    del no_image["image"]
    records = [
        rec(),  # 0 fine
        42,  # 1 record_not_object
        no_image,  # 2 missing_image_field
        rec("ex_images/gone.jpg"),  # 3 image_not_found
        rec(human="没有占位符"),  # 4 missing_image_token
        rec(human="<image><image>"),  # 5 extra_image_token
        dict(rec(), conversations=[]),  # 6 empty_conversations
        dict(rec(), conversations=[{"from": "gpt", "value": "x"}]),  # 7 bad_roles
        rec(gpt=""),  # 8 empty_turn
    ]
    (root / "ex_images" / "bad.jpg").write_bytes(b"\x00" * 10)
    records.append(rec("ex_images/bad.jpg"))  # 9 image_unreadable
    path = write_records(root / "ex_cn.json", records)
    before = snapshot(root)
    report = data.validate(root)
    assert snapshot(root) == before
    expected = {
        1: "record_not_object",
        2: "missing_image_field",
        3: "image_not_found",
        4: "missing_image_token",
        5: "extra_image_token",
        6: "empty_conversations",
        7: "bad_roles",
        8: "empty_turn",
        9: "image_unreadable",
    }
    assert {(p.index, p.kind) for p in report.problems} == set(expected.items())
    assert all(p.file == path and p.line == p.index + 2 for p in report.problems)
    assert not report.ok and report.records == 10
    assert report.counts == {kind: 1 for kind in data.PROBLEM_KINDS if kind in expected.values()}
    text = str(report)
    assert text.count("\n- ") == len(expected) and "ex_cn.json:4 record 2 `image`" in text
    html = report._repr_html_()
    assert html.count("<tr>") == len(expected) + 1 and "image_not_found" in html
    with pytest.raises(DatasetError) as err:
        report.raise_if_errors()
    assert "9 problems" in str(err.value)


def test_report_views_when_ok():
    report = data.validate(SAMPLE_DATA_DIR, split="eval")
    assert report.raise_if_errors() is report
    assert str(report).startswith("OK: 14 records and 14 images")
    assert "<table>" not in report._repr_html_() and report.counts == {}


def test_validate_a_loaded_subset():
    train, _ = data.train_eval_split(data.load_sample())
    report = data.validate(train)
    assert report.ok and report.records == len(train)


# ---------------------------------------------------------------------------------------------
# statistics


def test_token_counts_follow_the_template():
    ds = data.load_sample("eval")
    tok = CharTokenizer()
    rows = data.token_counts(ds, tok)
    record, row = ds[0], rows[0]
    text = data.chat_text(record).replace("<img></img>", "")
    assert row["text_tokens"] == len(text) + 1  # + BOS
    assert row["image_tokens"] == image_token_count(row["width"], row["height"])
    assert row["total"] == row["text_tokens"] + row["image_tokens"]
    small = data.token_counts(ds, tok, internvl.TilingSettings(num_image_token=64, max_num=6))[0]
    assert small["image_tokens"] == image_token_count(row["width"], row["height"], 64, 6)


def test_chat_text_matches_xtuner_internvl_template():
    record = data.load_sample("eval")[0]
    assert data.chat_text(record, system="SYS", image_context_tokens=2) == (
        "<|im_start|>system\nSYS<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
        "请你根据这张图片，讲一个脑洞大开的梗<|im_end|><|im_start|>assistant\n" + record.caption + "<|im_end|>"
    )


def test_caption_lengths_and_stats_without_tokenizer():
    ds = data.load_sample()
    assert data.caption_lengths(ds) == [len(r.caption) for r in ds]
    stats = data.dataset_stats(ds)
    assert set(stats) == {"id", "width", "height", "tiles", "text_tokens", "image_tokens", "total", "caption_chars"}
    assert all(len(v) == len(ds) for v in stats.values())
    assert stats["text_tokens"] == [None] * len(ds) and stats["total"] == stats["image_tokens"]


# ---------------------------------------------------------------------------------------------
# converters


def test_to_xtuner_and_llava_json_round_trip(tmp_path: Path):
    ds = data.load_sample("eval")
    xt = json.loads(data.to_xtuner_json(ds, tmp_path / "xt.json").read_text(encoding="utf-8"))
    assert set(xt[0]) == {"image", "conversations"} and xt[0]["image"] == ds[0].image
    llava = data.to_llava_json(ds, tmp_path / "llava.json", absolute_images=True)
    back = data.load_dataset(llava)
    assert [r.id for r in back] == [r.id for r in ds]
    assert data.validate(back).ok


def test_to_swift_jsonl(tmp_path: Path):
    ds = data.load_sample("eval")
    rows = [
        json.loads(line)
        for line in data.to_swift_jsonl(ds, tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == len(ds)
    assert rows[0]["query"] == PROMPT and rows[0]["response"] == ds[0].caption
    assert Path(rows[0]["images"][0]).is_absolute() and Path(rows[0]["images"][0]).is_file()
    multi = data.Record(
        "m",
        ds[0].image,
        (
            data.Conversation("human", PROMPT),
            data.Conversation("gpt", "一"),
            data.Conversation("human", "再来"),
            data.Conversation("gpt", "二"),
        ),
    )
    data.to_swift_jsonl(data.SampleSet((multi,), ds.root, ds.source, ds.format), tmp_path / "m.jsonl")
    row = json.loads((tmp_path / "m.jsonl").read_text(encoding="utf-8"))
    assert row["query"] == "再来" and row["history"] == [[PROMPT, "一"]]


def test_long_checks_show_a_progress_bar(capsys):
    """A bar from PROGRESS_FROM records on (or when asked); none on the 32-record sample by default."""
    data.validate(SAMPLE_DATA_DIR, split="train")
    data.token_counts(data.load_sample("train"))
    assert "record" not in capsys.readouterr().err
    data.validate(SAMPLE_DATA_DIR, split="train", progress=True)
    data.token_counts(data.load_sample("train"), progress=True)
    err = capsys.readouterr().err
    assert "validating" in err and "counting" in err and "32/32" in err
