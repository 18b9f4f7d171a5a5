"""Copies of the bundled sample in the other layouts the book accepts, built from its photos.

``build(kind, out)`` writes one of :data:`KINDS` under ``out`` and returns the
path to pass as ``data_path``:

* ``clot``: the real CLoT_cn_2000 layout, ``ex_cn.json`` + ``ex_images/`` and
  nothing else (no ``train.json``/``eval.json``), the images renamed to
  32-character names like the release's (``007aPnLRgy1hb39z0im50j30ci0el0wm.jpg``);
* ``jsonl``: one ``.jsonl`` file, one record per line, no ids, images relative
  to the file's folder;
* ``foodieqa``: a FoodieQA folder, ``sivqa_tidy.json`` (the release's field
  names) + ``images/``: every photo gets a question whose right choice is its
  caption, and every third photo a second question, so that, as in FoodieQA,
  several records share one image.

Each copy holds every record of the sample (train and eval), so the book has
to split it itself (``helpers.data.prepare_splits``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from helpers import data

KINDS = ("clot", "jsonl", "foodieqa")

_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def weibo_name(image: Path) -> str:
    """A 32-character [0-9a-zA-Z] name derived from the file's bytes, shaped like CLoT's image names."""
    number = int.from_bytes(hashlib.sha256(image.read_bytes()).digest(), "big")
    chars = []
    for _ in range(32):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars) + image.suffix


def _clot(ds: data.SampleSet, out: Path) -> Path:
    (out / "ex_images").mkdir(parents=True)
    records = []
    for r in ds:
        name = weibo_name(ds.image_path(r))
        shutil.copy(ds.image_path(r), out / "ex_images" / name)
        records.append({"id": Path(name).stem, **r.to_dict(with_id=False), "image": f"ex_images/{name}"})
    (out / "ex_cn.json").write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def _jsonl(ds: data.SampleSet, out: Path) -> Path:
    (out / "pics").mkdir(parents=True)
    lines = []
    for r in ds:
        path = ds.image_path(r)
        shutil.copy(path, out / "pics" / path.name)
        lines.append(json.dumps({**r.to_dict(with_id=False), "image": f"pics/{path.name}"}, ensure_ascii=False))
    file = out / "memes.jsonl"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


def _foodie_item(n: int, record: data.Record, image: str, captions: list[str], rng: random.Random) -> dict:
    others = rng.sample([c for c in captions if c != record.caption], 3)
    choices = [record.caption, *others]
    rng.shuffle(choices)
    return data.foodie_item(  # the release's fields, from the one schema in helpers.data
        question="这张图片配的是哪一句梗？",
        choices=choices,
        answer=choices.index(record.caption),
        question_type="caption",
        food_name=record.id,
        question_id=f"sivqa_{n}",
        food_id=n,
        food_type="meme",
        food_location="网络",
        food_file=image,
        question_en="Which joke goes with this picture?",
    )


def _foodieqa(ds: data.SampleSet, out: Path) -> Path:
    (out / "images").mkdir(parents=True)
    captions = [r.caption for r in ds]
    rng = random.Random(0)
    items = []
    for i, r in enumerate(ds):
        path = ds.image_path(r)
        shutil.copy(path, out / "images" / path.name)
        for _ in range(2 if i % 3 == 0 else 1):  # a second question about every third photo
            items.append(_foodie_item(len(items), r, f"images/{path.name}", captions, rng))
    (out / "sivqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False, indent=4), encoding="utf-8")
    for other in ("mivqa_tidy.json", "textqa_tidy.json"):  # the release's other files, not read by the book
        (out / other).write_text("[]\n", encoding="utf-8")
    return out


def build(kind: str, out: str | Path, ds: data.SampleSet | None = None) -> Path:
    """Write the bundled sample (or ``ds``) in layout ``kind`` under ``out``; return the ``data_path``."""
    builders = {"clot": _clot, "jsonl": _jsonl, "foodieqa": _foodieqa}
    if kind not in builders:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    return builders[kind](ds or data.load_sample(), Path(out))


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_no_eval_in_train(outputs: Path) -> dict:
    """Check that the run in ``outputs`` never trained on an eval record or photo; return split.json.

    The training file is the one XTuner's config read (``qlora/recipe.json``'s
    ``data_path``): it must be ``splits/train.json``, and no image of
    ``splits/eval.json`` may appear in it, by path or by the file's bytes.
    """
    splits = outputs / "splits"
    recipe = json.loads((outputs / "qlora" / "recipe.json").read_text(encoding="utf-8"))
    trained = Path(recipe["data_path"])
    assert trained.resolve() == (splits / "train.json").resolve(), recipe["data_path"]
    train = data.load_dataset(trained)
    evl = data.load_dataset(splits / "eval.json")
    train_paths = {train.image_path(r) for r in train}
    eval_paths = {evl.image_path(r) for r in evl}
    assert train_paths and eval_paths
    assert not train_paths & eval_paths, f"eval photos trained on: {sorted(map(str, train_paths & eval_paths))}"
    train_hashes = {_sha256(p) for p in train_paths}
    same = [str(p) for p in eval_paths if _sha256(p) in train_hashes]
    assert not same, f"eval photos whose bytes are also in train.json: {same}"
    info = json.loads((splits / "split.json").read_text(encoding="utf-8"))
    assert info["train"] == len(train) and info["eval"] == len(evl)
    assert not {r.id for r in train} & set(info["eval_ids"]), "an eval record is in train.json"
    return info
