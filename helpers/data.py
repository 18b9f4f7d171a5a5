"""Load, validate and describe CLoT-style image-caption datasets.

The book fine-tunes InternVL2 on records in the XTuner/LLaVA format that the
CLoT_cn_2000 data uses::

    {"image": "ex_images/NAME.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n请你根据这张图片，讲一个脑洞大开的梗"},
                       {"from": "gpt", "value": "CAPTION"}]}

This module reads such data from the layouts the book meets (see
:func:`load_dataset`), checks it *before* a training run would trip over it
(:func:`validate`, which reports every problem with file, record, line, field
and fix), counts the tokens a sample costs once InternVL2 has tiled its image
(:func:`token_counts`), and writes the formats the book's tools read
(:func:`to_xtuner_json`, :func:`to_llava_json`, :func:`to_swift_jsonl`).
"""

from __future__ import annotations

import html
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import SAMPLE_DATA_DIR, repo_path
from .errors import DatasetError
from .internvl import COURSE_PROMPT, IMAGE_TOKEN, XTUNER_SYSTEM, TilingSettings, build_prompt
from .internvl import Tokenizer as Tokenizer

__all__ = [
    "PROGRESS_FROM",
    "LAYOUTS",
    "PROBLEM_KINDS",
    "WARNING_KINDS",
    "Conversation",
    "Record",
    "SampleSet",
    "Problem",
    "ValidationReport",
    "Layout",
    "Splits",
    "EVAL_FRACTION",
    "MIN_EVAL",
    "resolve_layout",
    "prepare_splits",
    "load_dataset",
    "load_sample",
    "train_eval_split",
    "validate",
    "check_training_data",
    "xtuner_turns",
    "chat_text",
    "training_ids",
    "caption_lengths",
    "token_counts",
    "dataset_stats",
    "to_xtuner_json",
    "to_llava_json",
    "to_clot_folder",
    "to_swift_jsonl",
    "FOODIE_FILE",
    "COURSE_FOODIE_FILE",
    "FOODIE_FIELDS",
    "FOODIE_NEEDED",
    "FOODIE_NEEDED_BY_COURSE",
    "FOODIE_ANSWER_JOIN",
    "foodie_item",
    "foodie_to_llava",
]

#: The layouts :func:`load_dataset` accepts, as shown in error messages.
LAYOUTS = (
    "the book's sample folder: train.json + eval.json + ex_cn.json + ex_images/ (split='train'|'eval'|None)",
    "a CLoT_cn_2000 folder: ex_cn.json + ex_images/ (all records; split with train_eval_split)",
    "one XTuner/LLaVA .json file (a JSON list) or .jsonl file (one record per line), "
    "images relative to the file's folder",
    "a FoodieQA folder: sivqa_tidy.json + images/ (or the sivqa_tidy.json file itself)",
)

#: Every kind of problem :func:`validate` reports, with a one-line explanation.
PROBLEM_KINDS = {
    "truncated": "the file ends early (cut off while being copied or downloaded)",
    "not_utf8": "the file is not valid UTF-8",
    "malformed_json": "the JSON cannot be parsed",
    "top_level_not_list": "the top level of the .json file is not a list of records",
    "record_not_object": "a record is not a JSON object",
    "missing_image_field": "the record has no usable `image` field",
    "image_not_found": "the image file does not exist",
    "image_unreadable": "the image file cannot be decoded",
    "empty_conversations": "`conversations` is missing, not a list, or empty",
    "bad_roles": "turns do not alternate human, gpt, ... starting with human and ending with gpt",
    "empty_turn": "a turn has no text",
    "missing_image_token": "the first human turn has no <image> placeholder",
    "extra_image_token": "there are more <image> placeholders than images",
    "bad_foodie_item": "a FoodieQA item lacks a field it needs, or its answer is not one of its choices",
    "too_long": "the sample has more tokens than max_length",
}

#: The kinds that are warnings: training can go on (XTuner cuts the sample and says so in its log).
#: Every other kind is an error that stops :func:`check_training_data` (and so every training run).
WARNING_KINDS = frozenset({"too_long"})


# --------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class Conversation:
    """One entry of a record's ``conversations`` list: who speaks (``human``/``gpt``) and what.

    >>> Conversation("gpt", "住手！").to_dict()
    {'from': 'gpt', 'value': '住手！'}
    """

    role: str
    value: str

    def to_dict(self) -> dict[str, str]:
        """The JSON form, ``{"from": role, "value": value}``."""
        return {"from": self.role, "value": self.value}


@dataclass(frozen=True)
class Record:
    """One sample: an id, an image path relative to the dataset root, and its conversation.

    ``index`` is the record's position in its source file and ``line`` the line
    where it starts there (``None`` when it was built in memory).

    >>> r = Record("cat", "ex_images/cat.jpg", (Conversation("human", COURSE_PROMPT), Conversation("gpt", "喵")))
    >>> r.caption
    '喵'
    """

    id: str
    image: str
    conversations: tuple[Conversation, ...]
    index: int = 0
    line: int | None = None

    @property
    def prompt(self) -> str:
        """The first human turn's text."""
        return next((c.value for c in self.conversations if c.role == "human"), "")

    @property
    def caption(self) -> str:
        """The gpt turns' text (joined by newlines when there are several): what the model learns."""
        return "\n".join(c.value for c in self.conversations if c.role == "gpt")

    def to_dict(self, with_id: bool = True) -> dict[str, Any]:
        """The XTuner/LLaVA JSON form of the record.

        >>> Record("a", "x.jpg", ()).to_dict(with_id=False)
        {'image': 'x.jpg', 'conversations': []}
        """
        out: dict[str, Any] = {"id": self.id} if with_id else {}
        out["image"] = self.image
        out["conversations"] = [c.to_dict() for c in self.conversations]
        return out


@dataclass(frozen=True)
class SampleSet:
    """Records plus where they came from: the image root, the source file and its layout.

    ``format`` is one of ``clot_sample``, ``clot``, ``llava_json``, ``llava_jsonl``,
    ``foodieqa``; ``split`` is the split that was asked for, if any.

    >>> ds = load_dataset(SAMPLE_DATA_DIR, split="eval")
    >>> ds.image_path(ds[0]).is_file()
    True
    """

    records: tuple[Record, ...]
    root: Path
    source: Path
    format: str
    split: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def image_path(self, record: Record) -> Path:
        """Absolute path of a record's image (the root joined with its relative path)."""
        return (self.root / record.image).resolve()

    def subset(self, indices: Sequence[int], split: str | None = None) -> SampleSet:
        """A SampleSet with the records at ``indices`` (same root and source)."""
        return replace(self, records=tuple(self.records[i] for i in indices), split=split)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"SampleSet({len(self)} records, format={self.format!r}{split}, source='{self.source}')"


# --------------------------------------------------------------------------------------------
# problems and the report


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: what kind, where (file, record, line, field), and the fix.

    >>> p = Problem("image_not_found", Path("ex_cn.json"), 3, 17, "image", "ex_images/a.jpg does not exist", "Add it.")
    >>> str(p)
    'ex_cn.json:17 record 3 `image` [image_not_found]: ex_images/a.jpg does not exist. Fix: Add it.'
    """

    kind: str
    file: Path
    index: int | None
    line: int | None
    field: str | None
    message: str
    fix: str
    column: int | None = None

    @property
    def where(self) -> str:
        """``file:line[:column]``, then the record index and field when known."""
        out = self.file.name
        if self.line is not None:
            out += f":{self.line}"
            if self.column is not None:
                out += f":{self.column}"
        if self.index is not None:
            out += f" record {self.index}"
        if self.field:
            out += f" `{self.field}`"
        return out

    @property
    def is_warning(self) -> bool:
        """True for a kind in :data:`WARNING_KINDS` (training can go on), False for an error."""
        return self.kind in WARNING_KINDS

    def __str__(self) -> str:
        return f"{self.where} [{self.kind}]: {self.message}. Fix: {self.fix}"


@dataclass
class ValidationReport:
    """Everything :func:`validate` found: ``.ok``, ``.problems``, ``.counts`` and readable views.

    ``str(report)`` is plain text, a notebook shows ``_repr_html_`` as a table,
    and ``raise_if_errors()`` turns a failed report into a :class:`DatasetError`.

    >>> validate(SAMPLE_DATA_DIR).ok
    True
    """

    problems: list[Problem] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    records: int = 0
    images: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    @property
    def counts(self) -> dict[str, int]:
        """Number of problems per kind, in the order of :data:`PROBLEM_KINDS`."""
        found = [p.kind for p in self.problems]
        return {kind: found.count(kind) for kind in PROBLEM_KINDS if kind in found}

    @property
    def errors(self) -> list[Problem]:
        """The problems that stop a training run (every kind not in :data:`WARNING_KINDS`)."""
        return [p for p in self.problems if not p.is_warning]

    @property
    def warnings(self) -> list[Problem]:
        """The problems training can live with (:data:`WARNING_KINDS`), shown before it starts."""
        return [p for p in self.problems if p.is_warning]

    def by_kind(self, kind: str) -> list[Problem]:
        """The problems of one kind."""
        return [p for p in self.problems if p.kind == kind]

    def summary(self) -> str:
        """One line: how much was checked and how many problems of which kinds."""
        files = ", ".join(f.name for f in self.files) or "no file"
        head = f"{self.records} records and {self.images} images checked in {files}"
        if self.ok:
            return f"OK: {head}, no problems."
        bad = len({(p.file, p.index) for p in self.problems if p.index is not None})
        kinds = ", ".join(f"{k} x{n}" for k, n in self.counts.items())
        warned = len(self.warnings)
        which = (" (all warnings)" if warned == len(self.problems) else f" ({warned} warnings)") if warned else ""
        return f"{len(self.problems)} problems{which} ({bad} records affected; {kinds}): {head}."

    def __str__(self) -> str:
        return "\n".join([self.summary(), *(f"- {p}" for p in self.problems)])

    def _repr_html_(self) -> str:
        esc = html.escape
        head = f"<p><b>{esc(self.summary())}</b></p>"
        if self.ok:
            return head
        cols = ("kind", "file", "line", "record", "field", "problem", "fix")
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td style='text-align:left'>{esc(str(v))}</td>"
                for v in (
                    p.kind,
                    p.file.name,
                    "" if p.line is None else p.line,
                    "" if p.index is None else p.index,
                    p.field or "",
                    p.message,
                    p.fix,
                )
            )
            + "</tr>"
            for p in self.problems
        )
        header = "".join(f"<th style='text-align:left'>{c}</th>" for c in cols)
        return f"{head}<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"

    def raise_if_errors(self) -> ValidationReport:
        """Raise :class:`DatasetError` with the whole report when there is an error; else return self.

        Warnings (:data:`WARNING_KINDS`) alone do not raise: read them in ``report.warnings``.
        """
        if self.errors:
            raise DatasetError(str(self))
        return self


# --------------------------------------------------------------------------------------------
# reading files


_WS = re.compile(r"[ \t\n\r]*")


def record_start_lines(text: str) -> list[int]:
    """1-based line on which each element of a top-level JSON array starts.

    Walks the array with ``json.JSONDecoder.raw_decode``; ``text`` must be valid JSON.

    >>> record_start_lines('[\\n {"a": 1},\\n\\n {"b": 2}\\n]')
    [2, 4]
    """
    decoder = json.JSONDecoder()
    idx = _WS.match(text, 0).end()
    if text[idx : idx + 1] != "[":
        return []
    idx += 1
    lines: list[int] = []
    line, pos = 1, 0
    while True:
        idx = _WS.match(text, idx).end()
        if text[idx : idx + 1] in ("]", ""):
            return lines
        line += text.count("\n", pos, idx)
        pos = idx
        lines.append(line)
        _, idx = decoder.raw_decode(text, idx)
        idx = _WS.match(text, idx).end()
        if text[idx : idx + 1] == ",":
            idx += 1


_TRUNCATED = "ends early at line {line} (the file is probably truncated: was it copied completely?)"


def _truncated(path: Path, data: bytes, line: int, column: int | None = None) -> Problem:
    """A ``truncated`` problem: the file stops inside a record (or inside a character) at ``line``."""
    return Problem(
        "truncated",
        path,
        None,
        line,
        None,
        f"{path} " + _TRUNCATED.format(line=line),
        f"copy or download the file again and compare its size with the original's "
        f"(this copy has {len(data)} bytes); with the CLoT download, unpack the archive again",
        column,
    )


def _last_line(text: str) -> int:
    """1-based number of the last line that has any content (the line where a cut-off file stops)."""
    return text.rstrip().count("\n") + 1


def _decode_utf8(path: Path, data: bytes) -> tuple[str | None, list[Problem]]:
    """Text of a file, or one problem: ``truncated`` (cut inside a character) or ``not_utf8``.

    A multi-byte UTF-8 character cut off by the end of the file is a cut-off
    copy, not a wrong encoding. Otherwise the problem names the first bad
    byte (offset, line, column) and suggests converting from GBK only when
    the whole file really decodes as GBK (a Chinese-locale Windows save).
    """
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        if err.end == len(data) and err.reason == "unexpected end of data":
            return None, [_truncated(path, data, line, column)]
        byte = f"byte {err.start} (0x{data[err.start]:02x}) on line {line} is not valid UTF-8 ({err.reason})"
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            fix = (
                f"the file starts with a UTF-16 byte-order mark: convert it with "
                f"`iconv -f UTF-16 -t UTF-8 {path.name} > utf8.json` (or re-save it as UTF-8)"
            )
        elif _decodes_as_gbk(data):
            fix = (
                f"the file decodes as GBK (a Chinese-locale Windows encoding): convert it with "
                f"`iconv -f GBK -t UTF-8 {path.name} > utf8.json`, check the text, and use utf8.json"
            )
        else:
            fix = (
                "re-save the file as UTF-8 (in an editor: Save with Encoding > UTF-8); the bytes are not GBK "
                "either, so look at that spot for binary data or a file pasted in another encoding"
            )
        return None, [Problem("not_utf8", path, None, line, None, byte, fix, column)]


def _decodes_as_gbk(data: bytes) -> bool:
    """True when ``data`` decodes as GBK and holds at least one non-ASCII (so GBK-encoded) character."""
    try:
        text = data.decode("gbk")
    except UnicodeDecodeError:
        return False
    return any(ord(c) > 127 for c in text)


def _cut_off(text: str, err: json.JSONDecodeError) -> bool:
    """True when a JSON error is the end of the text arriving inside a value (a cut-off file)."""
    return err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")


def _read_items(path: Path) -> tuple[list[tuple[Any, int]] | None, list[Problem]]:
    """Parse a .json list or a .jsonl file into ``(item, start line)`` pairs, plus file-level problems.

    A .jsonl file is read line by line, so one broken line does not hide the others.
    A file that ends inside a value is reported as ``truncated``, not as malformed JSON.
    """
    data = path.read_bytes()
    text, problems = _decode_utf8(path, data)
    if text is None:
        return None, problems
    if path.suffix == ".jsonl":
        items = []
        lines = text.splitlines()
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                items.append((json.loads(raw), number))
            except json.JSONDecodeError as err:
                last = number == _last_line(text) and not text.endswith("\n")
                problems.append(
                    _truncated(path, data, number)
                    if last and _cut_off(raw, err)
                    else _json_problem(path, err, line=number)
                )
        return items, problems
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if text.strip() and _cut_off(text, err):
            return None, [_truncated(path, data, _last_line(text))]
        return None, [_json_problem(path, err)]
    if not isinstance(value, list):
        return None, [
            Problem(
                "top_level_not_list",
                path,
                None,
                1,
                None,
                f"the file holds a JSON {type(value).__name__}, not a list of records",
                "wrap the records in [ ... ] (a dict of records: use list(d.values()))",
            )
        ]
    return list(zip(value, record_start_lines(text))), []


def _json_problem(path: Path, err: json.JSONDecodeError, line: int | None = None) -> Problem:
    """A ``malformed_json`` problem from a JSONDecodeError (line given for .jsonl files)."""
    fix = "correct the JSON at that position (a missing comma or quote, or a trailing comma, is typical)"
    if err.msg.startswith("Unexpected UTF-8 BOM"):
        fix = "save the file as UTF-8 without a byte-order mark"
    return Problem("malformed_json", path, None, line or err.lineno, None, err.msg, fix, err.colno)


def _image_list(value: Any) -> list[str] | None:
    """Image paths from a record's ``image`` value (a string or a list of strings), or None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


# --------------------------------------------------------------------------------------------
# FoodieQA

#: The file of FoodieQA's single-image VQA part, and the file the course's ``process_food.py`` writes beside it.
FOODIE_FILE, COURSE_FOODIE_FILE = "sivqa_tidy.json", "sivqa_llava.json"

#: Every field of one item of ``sivqa_tidy.json``, as the FoodieQA release spells them (dotted: inside
#: ``food_meta``). The one place the schema lives: :func:`foodie_item` builds items from it and
#: ``tests/test_foodieqa.py`` pins it against the release's documentation (lyan62/FoodieQA,
#: ``val-ui/README_Validation.md`` and ``model-eval/scripts/sivqa_utils.py``).
FOODIE_FIELDS = (
    "question",
    "choices",
    "answer",
    "question_type",
    "food_name",
    "question_id",
    "food_meta.main_ingredient",
    "food_meta.id",
    "food_meta.food_name",
    "food_meta.food_type",
    "food_meta.food_location",
    "food_meta.food_file",
    "question_en",
    "choices_en",
)
#: The fields :func:`load_dataset` needs, and the fields the course's converter needs (it also names the dish).
FOODIE_NEEDED = ("question", "choices", "answer", "food_meta.food_file")
FOODIE_NEEDED_BY_COURSE = (*FOODIE_NEEDED, "food_meta.food_name")
#: What ``process_food.py`` puts between the right choice and the dish's name in the answer it trains on.
FOODIE_ANSWER_JOIN = "，图中的菜是"


def foodie_item(
    *,
    question: str,
    choices: Sequence[str],
    answer: int,
    food_name: str,
    food_file: str,
    question_id: str,
    question_type: str = "food_type",
    food_type: str = "",
    food_location: str = "",
    main_ingredient: Sequence[str] = (),
    food_id: int = 0,
    question_en: str = "",
    choices_en: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One ``sivqa_tidy.json`` item with exactly the release's fields (:data:`FOODIE_FIELDS`).

    ``answer`` is the index of the right choice; the release stores it as a string.
    ``question_en``/``choices_en`` (the release's English translation) stay empty unless given.

    >>> item = foodie_item(question="图片中的饮品是什么?", choices=["咖啡", "豆浆"], answer=0,
    ...                    food_name="咖啡", food_file="images/coffee.jpg", question_id="sivqa_0")
    >>> item["answer"], item["food_meta"]["food_file"]
    ('0', 'images/coffee.jpg')
    """
    if not 0 <= answer < len(choices):
        raise DatasetError(f"answer={answer}: the index of one of the {len(choices)} choices")
    return {
        "question": question,
        "choices": list(choices),
        "answer": str(answer),
        "question_type": question_type,
        "food_name": food_name,
        "question_id": question_id,
        "food_meta": {
            "main_ingredient": list(main_ingredient),
            "id": food_id,
            "food_name": food_name,
            "food_type": food_type,
            "food_location": food_location,
            "food_file": food_file,
        },
        "question_en": question_en,
        "choices_en": list(choices_en or []),  # empty: not translated
    }


_ABSENT = object()


def _dotted(obj: dict, name: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``, or ``_ABSENT`` when a level is missing or not an object."""
    for part in name.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _ABSENT
        obj = obj[part]
    return obj


def _foodie_problems(obj: dict, index: int, line: int, path: Path, needed: Sequence[str]) -> list[Problem]:
    """One ``bad_foodie_item`` problem for the first field of ``needed`` that is missing or unusable."""
    fix = "give every item the FoodieQA fields " + ", ".join(needed) + " (see helpers.data.FOODIE_FIELDS)"
    for name in needed:
        value = _dotted(obj, name)
        why = None
        if value is _ABSENT:
            why = f"`{name}` is missing"
        elif name == "choices" and not (isinstance(value, list) and value):
            why = f"`choices` must be a non-empty list, not {value!r}"
        elif name == "answer":
            choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
            try:
                ok = 0 <= int(value) < len(choices)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                why = f"answer={value!r} is not the index of one of the {len(choices)} choices"
                fix = 'give the index of the right choice as a string, "0" for the first'
        elif name != "choices" and not (isinstance(value, str) and value.strip()):
            why = f"`{name}` must be non-empty text, not {value!r}"
        if why:
            return [Problem("bad_foodie_item", path, index, line, name, why, fix)]
    return []


def _foodie_image(root: Path, food_file: str) -> str:
    """``food_meta.food_file`` relative to the dataset root (a bare name is looked up in ``images/``)."""
    if not (root / food_file).exists() and (root / "images" / food_file).exists():
        return f"images/{food_file}"
    return food_file


def _foodie_to_item(obj: Any, index: int, line: int, path: Path, root: Path) -> tuple[Any, list[Problem]]:
    """Turn one FoodieQA single-image VQA item into the book's XTuner record dict.

    The human turn is ``<image>\\n`` + the question + the lettered choices; the gpt
    turn is the text of the right choice (``answer`` is its index, a string in
    the real file). ``food_meta.food_file`` is taken relative to the dataset root,
    or to its ``images/`` folder when it is a bare file name. (The course's own
    conversion, which trains on other text, is :func:`foodie_to_llava`.)
    """
    if not isinstance(obj, dict):
        return obj, []  # reported as record_not_object by _check_item
    problems = _foodie_problems(obj, index, line, path, FOODIE_NEEDED)
    if problems:
        return None, problems
    question, choices, answer = obj["question"], obj["choices"], obj["answer"]
    letters = "ABCDEFGHIJ"
    options = "\n".join(f"{letters[i]}. {str(c).strip()}" for i, c in enumerate(choices))
    return {
        "id": str(obj.get("question_id", index)),
        "image": _foodie_image(root, obj["food_meta"]["food_file"]),
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{question.strip()}\n{options}"},
            {"from": "gpt", "value": str(choices[int(answer)]).strip()},
        ],
    }, problems


def foodie_to_llava(path: str | Path, out: str | Path | None = None) -> Path:
    """Do what the course's ``process_food.py`` does: FoodieQA's ``sivqa_tidy.json`` -> XTuner LLaVA JSON.

    Each item becomes one record: the human turn is the question followed by
    ``\\n<image>`` (the course puts the image last), the gpt turn the right choice's
    text + ``，图中的菜是`` + ``food_meta.food_name``. Choices are *not* shown to the
    model, so it learns to name the answer and the dish. One addition to the
    course's script: each record keeps its ``question_id`` as ``id``, because a
    photo has several questions and the book matches answers by id.

    ``out`` defaults to ``sivqa_llava.json`` beside ``sivqa_tidy.json`` (the
    course's place; image paths stay as the release writes them); elsewhere,
    image paths are absolute. Before anything is written, every item is checked
    (:data:`FOODIE_NEEDED_BY_COURSE`) and every image must exist; otherwise a
    :class:`DatasetError` lists each problem with file, line, record and field.

    >>> import tempfile
    >>> out = foodie_to_llava(SAMPLE_DATA_DIR.parent / "foodieqa_sample", Path(tempfile.mkdtemp()) / "s.json")
    >>> json.loads(out.read_text())[0]["conversations"][1]["value"]
    '浓缩咖啡，图中的菜是浓缩咖啡'
    """
    layout = resolve_layout(path)
    if layout.format != "foodieqa":
        raise DatasetError(f"{path} is a {layout.format} dataset, not FoodieQA ({FOODIE_FILE} + images/)")
    file, root = layout.file, layout.root
    out = Path(out) if out is not None else root / COURSE_FOODIE_FILE
    keep_relative = out.parent.resolve() == root
    report = ValidationReport(files=[file])
    items, report.problems = _read_items(file)
    records = []
    for index, (obj, line) in enumerate(items or []):
        report.records += 1
        if not isinstance(obj, dict):
            report.problems.append(
                Problem("record_not_object", file, index, line, None, f"a {type(obj).__name__}", "use a JSON object")
            )
            continue
        issues = _foodie_problems(obj, index, line, file, FOODIE_NEEDED_BY_COURSE)
        if not issues:
            image = _foodie_image(root, obj["food_meta"]["food_file"])
            if not (root / image).is_file():
                issues.append(
                    Problem(
                        "image_not_found",
                        file,
                        index,
                        line,
                        "food_meta.food_file",
                        f"{root / image} does not exist",
                        "put the photo there or correct food_meta.food_file (relative to the dataset folder)",
                    )
                )
        report.problems += issues
        if issues:
            continue
        meta = obj["food_meta"]
        records.append(
            {
                "id": str(obj.get("question_id", index)),
                "image": image if keep_relative else str((root / image).resolve()),
                "conversations": [
                    {"from": "human", "value": f"{obj['question']}\n{IMAGE_TOKEN}"},
                    {
                        "from": "gpt",
                        "value": f"{obj['choices'][int(obj['answer'])]}{FOODIE_ANSWER_JOIN}{meta['food_name']}",
                    },
                ],
            }
        )
    report.raise_if_errors()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _is_foodie(items: list[tuple[Any, int]], path: Path) -> bool:
    """True for a FoodieQA sivqa file (by name, or by its first record's keys).

    A file of XTuner records (``conversations``) is not, whatever its name: the
    course's converted ``sivqa_llava.json`` is LLaVA JSON.
    """
    first = items[0][0] if items else None
    if isinstance(first, dict) and "conversations" in first:
        return False
    if path.name.startswith("sivqa"):
        return True
    return isinstance(first, dict) and "food_meta" in first and "question" in first


# --------------------------------------------------------------------------------------------
# layouts


def _layout_error(path: Path, why: str) -> DatasetError:
    """The error for a path that is none of the accepted layouts."""
    accepted = "\n".join(f"  - {layout}" for layout in LAYOUTS)
    return DatasetError(f"{path}: {why}.\nAccepted layouts:\n{accepted}")


def _resolve(path: Path, split: str | None) -> tuple[str, Path, Path]:
    """``(format, json file, image root)`` of a dataset path, or a DatasetError naming the layouts."""
    path = Path(path)
    if split not in (None, "train", "eval"):
        raise DatasetError(f"split={split!r}: use 'train', 'eval' or None (all records)")
    if not path.exists():
        raise _layout_error(path, "no such file or folder")
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise _layout_error(path, f"a {path.suffix or 'suffix-less'} file is not a dataset")
        if split is not None:
            raise DatasetError(
                f"{path}: split={split!r} needs the sample folder layout; a single file "
                "has no splits (use train_eval_split(load_dataset(path)))"
            )
        return ("llava_jsonl" if path.suffix == ".jsonl" else "llava_json"), path, path.parent
    names = {p.name for p in path.iterdir()}
    if {"train.json", "eval.json", "ex_images"} <= names:
        file = path / {None: "ex_cn.json", "train": "train.json", "eval": "eval.json"}[split]
        if not file.is_file():
            raise DatasetError(f"{file} is missing: regenerate the folder with tools/make_sample_data.py")
        return "clot_sample", file, path
    if "ex_cn.json" in names:
        if split is not None:
            raise DatasetError(
                f"{path} is a CLoT folder without train.json/eval.json, so split={split!r} "
                "has nothing to read: load it whole and use train_eval_split(ds)"
            )
        return "clot", path / "ex_cn.json", path
    foodie = [path / "sivqa_tidy.json", *sorted(path.glob("*/sivqa_tidy.json"))]
    for file in foodie:
        if file.is_file():
            if split is not None:
                raise DatasetError(f"{path}: FoodieQA has no train/eval split files; use train_eval_split")
            return "foodieqa", file, file.parent
    shown = ", ".join(sorted(names)[:8]) or "nothing"
    raise _layout_error(path, f"the folder holds {shown}, which matches no layout")


@dataclass(frozen=True)
class Layout:
    """Which accepted layout a path is (see :data:`LAYOUTS`): the records file, the image root, own splits.

    ``format`` is one of ``clot_sample``, ``clot``, ``llava_json``, ``llava_jsonl``,
    ``foodieqa``. Only the book's sample ships its own ``train.json``/``eval.json``
    (``split_files``); every other layout is split by :func:`prepare_splits`.
    """

    format: str
    file: Path
    root: Path
    split_files: tuple[tuple[str, Path], ...] = ()


def resolve_layout(path: str | Path) -> Layout:
    """Answer "which layout is this path?", or raise a :class:`DatasetError` listing the accepted ones.

    >>> resolve_layout(SAMPLE_DATA_DIR).format, resolve_layout(SAMPLE_DATA_DIR / "ex_cn.json").format
    ('clot_sample', 'llava_json')
    """
    fmt, file, root = _resolve(Path(path), None)
    splits = (("train", root / "train.json"), ("eval", root / "eval.json")) if fmt == "clot_sample" else ()
    return Layout(fmt, file.resolve(), root.resolve(), splits)


#: The share of records :func:`prepare_splits` holds out (the CLoT paper's 95/5), and the least it holds out.
EVAL_FRACTION, MIN_EVAL = 0.05, 8


@dataclass(frozen=True)
class Splits:
    """A dataset's train and eval records and the XTuner JSON files written for them."""

    train: SampleSet
    eval: SampleSet
    train_file: Path
    eval_file: Path
    info: dict[str, Any]

    def __getitem__(self, split: str) -> SampleSet:
        return {"train": self.train, "eval": self.eval}[split]

    def items(self) -> list[tuple[str, SampleSet]]:
        """``[("train", train), ("eval", eval)]``, as a dict's items."""
        return [("train", self.train), ("eval", self.eval)]


def prepare_splits(
    path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    eval_fraction: float = EVAL_FRACTION,
    min_eval: int = MIN_EVAL,
) -> Splits:
    """One train/eval split for every layout, written where training and evaluation read it.

    The book's sample keeps its own split (its eval photos appear nowhere in
    train). Any other layout is split by :func:`train_eval_split`: seeded, so
    the same ``seed`` always holds out the same records, ``eval_fraction`` of
    them but at least ``min_eval``, by photo (records that share an image stay
    on one side, so no eval photo is trained on). Both splits are written to ``out_dir`` as
    XTuner JSON with absolute image paths (``train.json``, ``eval.json``), with
    ``split.json`` recording the source file, its SHA-256, the seed and the
    counts. Training reads ``train_file`` only; notebooks 02 and 07 answer and
    score ``eval`` only.

    >>> import tempfile
    >>> s = prepare_splits(SAMPLE_DATA_DIR, tempfile.mkdtemp())
    >>> s.info["format"], len(s.train) + len(s.eval) == len(load_sample())
    ('clot_sample', True)
    """
    import hashlib

    layout = resolve_layout(path)
    if layout.split_files:
        train, evl = (load_dataset(path, split=name) for name in ("train", "eval"))
        method = "the sample's own train.json/eval.json"
    else:
        everything = load_dataset(path)
        n_eval = max(min_eval, round(len(everything) * eval_fraction))
        if n_eval >= len(everything):
            raise DatasetError(
                f"{layout.file} has {len(everything)} records: too few to hold out {n_eval} for "
                "evaluation and train on the rest. Fix: use a larger dataset or lower min_eval."
            )
        train, evl = train_eval_split(everything, n_eval / len(everything), seed)
        method = f"train_eval_split(seed={seed}, eval_fraction={n_eval / len(everything):.4f}), by photo"
    out = repo_path(out_dir)
    files = {
        name: to_xtuner_json(ds, out / f"{name}.json", absolute_images=True)
        for name, ds in (("train", train), ("eval", evl))
    }
    info = {
        "source": str(layout.file),
        "format": layout.format,
        "sha256": hashlib.sha256(layout.file.read_bytes()).hexdigest(),
        "seed": seed,
        "method": method,
        "train": len(train),
        "eval": len(evl),
        "eval_ids": [r.id for r in evl],
    }
    _write_json(info, out / "split.json")
    return Splits(train, evl, files["train"], files["eval"], info)


def load_dataset(path: str | Path = SAMPLE_DATA_DIR, split: str | None = None) -> SampleSet:
    """Read a dataset in any of the layouts the book meets and return a :class:`SampleSet`.

    Accepted layouts:

    (a) the book's sample folder (``helpers/sample_data/clot_sample``):
        ``train.json``, ``eval.json``, ``ex_cn.json`` (= train + eval) and
        ``ex_images/``; ``split='train'``, ``'eval'`` or ``None`` picks the file;
    (b) the real CLoT_cn_2000 folder: ``ex_cn.json`` + ``ex_images/``, all
        records (split them with :func:`train_eval_split`);
    (c) one XTuner/LLaVA ``.json`` file (a list of records) or ``.jsonl`` file
        (one record per line); image paths are relative to the file's folder;
    (d) a FoodieQA folder (``sivqa_tidy.json`` + ``images/``, also one level
        down as in a hub snapshot) or the ``sivqa_tidy.json`` file: each
        single-image question becomes a record whose human turn is
        ``<image>\\n`` + question + lettered choices and whose gpt turn is the
        text of the right choice.

    Loading checks only what it needs to build records; image files are not
    opened. Use :func:`validate` for the full check. Any other path raises a
    :class:`DatasetError` that lists these layouts.

    >>> ds = load_dataset(SAMPLE_DATA_DIR, split="train")
    >>> ds.format, ds[0].image
    ('clot_sample', 'ex_images/astronaut.jpg')
    """
    fmt, file, root = _resolve(Path(path), split)
    items, problems = _read_items(file)
    if items is not None and fmt == "llava_json" and _is_foodie(items, file):
        fmt = "foodieqa"
    if items is None or problems:
        raise DatasetError(
            f"cannot read {file}:\n"
            + "\n".join(f"- {p}" for p in problems)
            + "\nRun helpers.data.validate(path) for the full report."
        )
    records, bad = [], []
    for index, (obj, line) in enumerate(items):
        if fmt == "foodieqa":
            obj, issues = _foodie_to_item(obj, index, line, file, root)
            bad += issues
        record = _to_record(obj, index, line)
        if record is None and obj is not None:
            bad.append(
                f"{file.name}:{line} record {index} is not an object with a `conversations` list "
                'of {"from", "value"} objects'
            )
        elif record is not None:
            records.append(record)
    if bad:
        raise DatasetError(
            f"cannot build records from {file}:\n"
            + "\n".join(f"- {b}" for b in bad[:20])
            + "\nRun helpers.data.validate(path) for the full report and the fixes."
        )
    return SampleSet(tuple(records), root.resolve(), file.resolve(), fmt, split)


def load_sample(split: str | None = None) -> SampleSet:
    """The book's bundled sample set (``helpers/sample_data/clot_sample``).

    >>> len(load_sample("train")) + len(load_sample("eval")) == len(load_sample())
    True
    """
    return load_dataset(SAMPLE_DATA_DIR, split)


def _to_record(obj: Any, index: int, line: int | None) -> Record | None:
    """A Record from a record dict, or None when its shape cannot make one."""
    if not isinstance(obj, dict):
        return None
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns
    ):
        return None
    images = _image_list(obj.get("image")) or [""]
    image = images[0] if images else ""
    rid = obj.get("id")
    rid = str(rid) if rid not in (None, "") else (Path(image).stem or str(index))
    return Record(rid, image, tuple(Conversation(t["from"], t["value"]) for t in turns), index, line)


def _photo_key(ds: SampleSet, index: int) -> str:
    """What makes two records "the same photo": the SHA-256 of the image file's bytes.

    Falls back to the resolved path when the file cannot be read, and to the
    record itself when it names no image.
    """
    import hashlib

    record = ds[index]
    if not record.image:
        return f"record {index}"
    path = ds.image_path(record)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return str(path)


def train_eval_split(ds: SampleSet, eval_fraction: float = 0.2, seed: int = 0) -> tuple[SampleSet, SampleSet]:
    """Split a SampleSet into disjoint train and eval sets, the same way for the same seed.

    The split is by photo: records that show the same image (the same file,
    or a file with identical bytes under another name, as when FoodieQA asks
    several questions about one dish) always land on the same side, so no
    eval photo is ever trained on. The photos are shuffled with ``seed`` and
    held out until at least ``eval_fraction`` of the records are; when every
    record has its own photo, that is exactly ``round(len(ds) * eval_fraction)``.

    >>> train, evl = train_eval_split(load_sample(), eval_fraction=0.25)
    >>> len(train) + len(evl) == len(load_sample())
    True
    """
    if not 0 < eval_fraction < 1:
        raise DatasetError(f"eval_fraction={eval_fraction}: choose a fraction between 0 and 1, e.g. 0.2")
    photos: dict[str, list[int]] = {}
    for index in range(len(ds)):
        photos.setdefault(_photo_key(ds, index), []).append(index)
    order = list(photos.values())
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(ds) * eval_fraction))
    held: list[int] = []
    for group in order:
        if len(held) >= n_eval:
            break
        held += group
    if len(held) >= len(ds):
        raise DatasetError(
            f"{ds.source}: its {len(ds)} records show {len(order)} distinct photo(s), too few to hold some out "
            "for evaluation and train on the others. Fix: use a dataset with more photos."
        )
    kept = set(held)
    return ds.subset([i for i in range(len(ds)) if i not in kept], "train"), ds.subset(sorted(kept), "eval")


# --------------------------------------------------------------------------------------------
# validation


def _check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, None)`` for a readable image, ``(None, why)`` otherwise (open, verify, then decode)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            im.convert("RGB")  # what XTuner's InternVL dataset does with every image
            return im.size, None
    except Exception as err:  # PIL raises many types for broken files
        return None, f"{type(err).__name__}: {err}"


def _check_item(
    obj: Any, index: int, line: int, file: Path, root: Path, *, image_field: str = "image", image_cache: dict[Path, Any]
) -> tuple[list[Problem], Any]:
    """All record-level problems of one record dict; also returns the image size when readable."""

    def problem(kind: str, fld: str | None, message: str, fix: str) -> Problem:
        return Problem(kind, file, index, line, fld, message, fix)

    if not isinstance(obj, dict):
        return [
            problem(
                "record_not_object",
                None,
                f"the record is a JSON {type(obj).__name__}",
                'make each record an object: {"image": ..., "conversations": [...]}',
            )
        ], None
    out: list[Problem] = []
    size = None
    images = _image_list(obj.get("image"))
    if images is None or len(images) != 1 or not images[0].strip():
        got = "missing" if "image" not in obj else f"{obj.get('image')!r}"
        out.append(
            problem(
                "missing_image_field",
                image_field,
                f"the image field is {got}",
                "set it to one image path relative to the dataset root, e.g. "
                '"ex_images/NAME.jpg" (XTuner\'s InternVL dataset takes one image per record)',
            )
        )
        images = []
    else:
        path = root / images[0]
        if path not in image_cache:
            image_cache[path] = _check_image(path) if path.is_file() else (None, "missing")
        size, why = image_cache[path]
        if why == "missing":
            out.append(
                problem(
                    "image_not_found",
                    image_field,
                    f"{images[0]} does not exist (looked for {path})",
                    f"copy the image there, or correct the path (it is relative to {root})",
                )
            )
        elif why is not None:
            out.append(
                problem(
                    "image_unreadable",
                    image_field,
                    f"{images[0]} cannot be decoded ({why})",
                    "replace the file with an intact JPEG/PNG, or drop the record",
                )
            )

    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        got = "missing" if "conversations" not in obj else f"{turns!r}"[:60]
        out.append(
            problem(
                "empty_conversations",
                "conversations",
                f"conversations is {got}",
                'give a list of turns: [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]',
            )
        )
        return out, size
    roles = [t.get("from") if isinstance(t, dict) else None for t in turns]
    expected = ["human" if i % 2 == 0 else "gpt" for i in range(len(turns))]
    if roles != expected or roles[-1] != "gpt":
        bad = next((i for i, (r, e) in enumerate(zip(roles, expected)) if r != e), len(roles) - 1)
        out.append(
            problem(
                "bad_roles",
                f"conversations[{bad}].from",
                f"the roles are {', '.join(map(str, roles))}",
                "make the turns alternate human, gpt, human, gpt, ... starting with human "
                "and ending with gpt (XTuner drops leading gpt turns and an unanswered "
                "human turn is never trained)",
            )
        )
    texts = [t.get("value") if isinstance(t, dict) else None for t in turns]
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            out.append(
                problem(
                    "empty_turn",
                    f"conversations[{i}].value",
                    f"turn {i} has no text ({text!r})",
                    "write the turn's text, or remove the turn together with its partner",
                )
            )
    if images:
        first_human = next((i for i, r in enumerate(roles) if r == "human"), None)
        if first_human is not None and isinstance(texts[first_human], str) and IMAGE_TOKEN not in texts[first_human]:
            out.append(
                problem(
                    "missing_image_token",
                    f"conversations[{first_human}].value",
                    "the first human turn has no <image> placeholder",
                    f'start it with "<image>\\n" so the image tokens go there (CLoT: {COURSE_PROMPT!r})',
                )
            )
        seen = 0
        for i, text in enumerate(texts):
            seen += text.count(IMAGE_TOKEN) if isinstance(text, str) else 0
            if seen > len(images):
                out.append(
                    problem(
                        "extra_image_token",
                        f"conversations[{i}].value",
                        f"{seen} <image> placeholders up to turn {i}, but the record has {len(images)} image",
                        "keep exactly one <image>, in the first human turn",
                    )
                )
                break
    return out, size


#: From this many records on, :func:`validate` and :func:`token_counts` show a progress bar by default
#: (the bundled sample's 32 show none; CLoT_cn_2000's 2,000 images take a minute or two to decode).
PROGRESS_FROM = 200


def _bar(items: Any, desc: str, progress: bool | None) -> Any:
    """``items`` wrapped in a tqdm bar when ``progress`` (``None``: when there are PROGRESS_FROM or more)."""
    items = list(items)
    if progress is None:
        progress = len(items) >= PROGRESS_FROM
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="record")


def validate(
    path_or_dataset: str | Path | SampleSet,
    *,
    split: str | None = None,
    tokenizer: Tokenizer | None = None,
    max_length: int | None = None,
    tiling: TilingSettings | None = None,
    system: str = XTUNER_SYSTEM,
    image_folder: str | Path | None = None,
    progress: bool | None = None,
) -> ValidationReport:
    """Check a dataset the way a training run would use it and report *every* problem.

    Takes a path in any layout of :func:`load_dataset` (with the same ``split``)
    or an already loaded :class:`SampleSet`. It looks for, each as its own
    kind (see :data:`PROBLEM_KINDS`): a file that is not UTF-8 (byte offset,
    line), malformed JSON (line, column), a top level that is not a list, a
    record that is not an object, a missing or empty ``image`` field, a missing
    or undecodable image file (opened and verified with PIL), missing/empty
    ``conversations``, roles that do not alternate human/gpt from human to gpt,
    empty turns, no ``<image>`` in the first human turn, more ``<image>`` than
    images, and, when ``tokenizer`` and ``max_length`` are given, samples longer
    than ``max_length`` once the image is tiled (see :func:`token_counts`).
    Each problem names the file, the record index, the line where that record
    starts, the field, and the fix. Files are only read, never modified.
    A file cut off early is reported as ``truncated`` (with the line where it
    stops), not as bad JSON or a bad encoding. ``image_folder`` replaces the
    layout's image root, as XTuner's ``image_folders`` does (image paths are
    joined to it). :data:`WARNING_KINDS` are warnings; everything else is an error.
    Every image is decoded, so a real dataset takes a while: ``progress`` shows a bar
    (``None``: from :data:`PROGRESS_FROM` records on).

    >>> report = validate(SAMPLE_DATA_DIR, split="train")
    >>> report.ok, report.records
    (True, 32)
    """
    if max_length is not None and tokenizer is None:
        raise DatasetError("max_length needs a tokenizer to count tokens: pass tokenizer=... as well")
    tiling = tiling or TilingSettings()
    report = ValidationReport()
    cache: dict[Path, Any] = {}
    if isinstance(path_or_dataset, SampleSet):
        ds = path_or_dataset
        report.files.append(ds.source)
        entries = [(r.to_dict(), r.index, r.line or 0) for r in ds]
        fmt, file, root = ds.format, ds.source, ds.root
    else:
        fmt, file, root = _resolve(Path(path_or_dataset), split)
        root = Path(image_folder) if image_folder is not None else root
        report.files.append(file)
        items, problems = _read_items(file)
        report.problems += problems
        if items is None:
            return report
        if fmt == "llava_json" and _is_foodie(items, file):
            fmt = "foodieqa"
        entries = []
        for index, (obj, line) in enumerate(items):
            if fmt == "foodieqa":
                obj, issues = _foodie_to_item(obj, index, line, file, root)
                report.problems += issues
                if obj is None:
                    continue
            entries.append((obj, index, line))
    image_field = "food_meta.food_file" if fmt == "foodieqa" else "image"
    for obj, index, line in _bar(entries, "validating", progress):
        report.records += 1
        problems, size = _check_item(obj, index, line, file, root, image_field=image_field, image_cache=cache)
        report.problems += problems
        if tokenizer is not None and max_length is not None and not problems and size is not None:
            record = _to_record(obj, index, line)
            count = _count(record, tokenizer, size, tiling, system)
            if count["total"] > max_length:
                report.problems.append(
                    Problem(
                        "too_long",
                        file,
                        index,
                        line,
                        "conversations",
                        f"the sample is {count['total']} tokens (text {count['text_tokens']} + image "
                        f"{count['image_tokens']} for {size[0]}x{size[1]} px = {count['tiles']} tiles) "
                        f"but max_length is {max_length}; XTuner would cut off the end of the answer",
                        "raise max_length, lower max_num (fewer tiles per image), or shorten the text",
                    )
                )
    report.images = len(cache)
    return report


class _LazyTokenizer:
    """A model's tokenizer, loaded on the first ``encode`` (so a broken dataset stops without it)."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = str(model_path)
        self._tokenizer: Any = None

    def _load(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=True)
        return self._tokenizer

    @property
    def bos_token_id(self) -> int | None:
        return self._load().bos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list:
        return self._load().encode(text, add_special_tokens=add_special_tokens)


def check_training_data(
    data_paths: str | Path | Sequence[str | Path],
    image_folders: Any,
    model_path: str | Path,
    max_length: int,
    *,
    cwd: str | Path | None = None,
) -> ValidationReport:
    """Validate what an XTuner run will read, exactly as it will read it; raise on any error.

    ``data_paths``/``image_folders`` are the config's (one each, or lists of
    equal length), ``model_path`` gives the tiling settings and the tokenizer
    (loaded only when a clean record needs its tokens counted), ``max_length``
    the token limit. Relative paths are taken from ``cwd`` (the folder the
    training runs in; default: the current folder), as XTuner takes them.

    Raises :class:`DatasetError` whose message is the whole report when there
    is any error: each of them would crash XTuner, or (a missing or
    undecodable image) make its ``InternVL_V1_5_Dataset`` print ``Error: ...``
    and silently train on a random other sample instead. Returns the report
    otherwise; its ``warnings`` (samples longer than ``max_length``) are for
    showing before training starts.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    paths = [data_paths] if isinstance(data_paths, (str, Path)) else list(data_paths)
    folders = [image_folders] if not isinstance(image_folders, (list, tuple)) else list(image_folders)
    if len(folders) != len(paths):
        raise DatasetError(
            f"the config has {len(paths)} data_paths but {len(folders)} image_folders: "
            "give one image folder per data file"
        )
    for data_path in paths:  # a file XTuner cannot read at all, before the model is looked at
        file = base / Path(data_path)
        if file.suffix == ".json" and file.is_file():
            items, _ = _read_items(file)
            if items and _is_foodie(items, file):
                raise DatasetError(
                    f"data_path {file} is FoodieQA's own format (question/choices/answer), and XTuner's "
                    "InternVL dataset reads conversations only (it would stop with KeyError: 'conversations'); "
                    "convert it first: helpers.data.foodie_to_llava(folder), the course's process_food.py"
                )
    model = base / Path(model_path)
    settings = TilingSettings.from_config(model)  # a ModelDirError that names the fix if it is no model folder
    tokenizer = _LazyTokenizer(model)
    report = ValidationReport()
    for data_path, folder in zip(paths, folders):
        file = base / Path(data_path)
        if file.is_dir():
            raise DatasetError(
                f"data_path {file} is a folder; XTuner reads one .json or .jsonl file: use the "
                "folder's train.json (or ex_cn.json)"
            )
        if folder is None:
            raise DatasetError(
                f"image_folders is None for {file}: XTuner would fail to join it to every image "
                "path; set image_folder to the folder the image paths are relative to"
            )
        part = validate(
            file, tokenizer=tokenizer, max_length=max_length, image_folder=base / Path(folder), tiling=settings
        )
        report.problems += part.problems
        report.files += part.files
        report.records += part.records
        report.images += part.images
    return report.raise_if_errors()


# --------------------------------------------------------------------------------------------
# tokens and statistics


def xtuner_turns(record: Record) -> list[tuple[str, str]]:
    """The ``(question, answer)`` pairs XTuner's InternVL dataset makes of a record.

    Mirrors ``InternVL_V1_5_Dataset.get_inputid_labels``: leading gpt turns are
    dropped, consecutive human turns are joined, both sides are stripped, and a
    human turn holding ``<image>`` is rewritten to start with it and a newline.

    >>> r = Record("a", "a.jpg", (Conversation("human", "讲个梗 <image>"), Conversation("gpt", " 好 ")))
    >>> xtuner_turns(r)
    [('<image>\\n讲个梗', '好')]
    """
    pairs, pending = [], ""
    turns = list(record.conversations)
    while turns and turns[0].role == "gpt":
        turns = turns[1:]
    for turn in turns:
        if turn.role == "human":
            value = turn.value
            if IMAGE_TOKEN in value:
                value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
            pending += value.strip()
        else:
            pairs.append((pending, turn.value.strip()))
            pending = ""
    return pairs


def chat_text(record: Record, *, system: str = XTUNER_SYSTEM, image_context_tokens: int = 0) -> str:
    """The full training text of a record in InternVL2's internlm2-chat template, as XTuner builds it.

    ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x ``image_context_tokens`` + ``</img>``
    (the real count is tiles x 256, far too long to print; 0 keeps it readable).

    >>> r = Record("a", "a.jpg", (Conversation("human", "<image>\\n讲个梗"), Conversation("gpt", "好")))
    >>> chat_text(r, system="S", image_context_tokens=1)
    '<|im_start|>system\\nS<|im_end|><|im_start|>user\\n<img><IMG_CONTEXT></img>\\n讲个梗<|im_end|><|im_start|>assistant\\n好<|im_end|>'
    """
    return _training_prompt(record, system, image_context_tokens).text


def _training_prompt(record: Record, system: str, image_context_tokens: int | None) -> Any:
    """:func:`helpers.internvl.build_prompt` of a record's XTuner turns (``None`` keeps ``<image>``)."""
    tiles = None if image_context_tokens is None else [image_context_tokens]
    return build_prompt(xtuner_turns(record), tiles=tiles, num_image_token=1, system=system)


def training_ids(
    record: Record,
    tokenizer: Tokenizer,
    image_context_tokens: int,
    *,
    system: str = XTUNER_SYSTEM,
    ignore_index: int = -100,
) -> tuple[list[int], list[int]]:
    """``input_ids`` and ``labels`` of a record, encoded as XTuner's InternVL dataset encodes them.

    The prompt comes from :func:`helpers.internvl.build_prompt`; its segments
    are encoded one by one (the first with BOS), and the inputs are masked with
    ``ignore_index`` in the labels, so the loss covers the answers and their
    ``<|im_end|>`` only. For a training loop of your own that learns exactly
    what ``xtuner train`` learns.
    """
    return _training_prompt(record, system, image_context_tokens).ids(tokenizer, ignore_index)


def _text_tokens(record: Record, tokenizer: Tokenizer, system: str) -> int:
    """Tokens of the text around the image: each XTuner segment encoded apart, split at the image.

    One more for the BOS token when the tokenizer has one (XTuner encodes the
    first input with ``add_special_tokens=True``).
    """
    segments = _training_prompt(record, system, None).segments
    total = sum(
        len(tokenizer.encode(part, add_special_tokens=False))
        for segment in segments
        for part in segment.split(IMAGE_TOKEN)
        if part
    )
    return total + (1 if getattr(tokenizer, "bos_token_id", None) is not None else 0)


def _count(
    record: Record, tokenizer: Tokenizer | None, size: tuple[int, int], tiling: TilingSettings, system: str
) -> dict[str, Any]:
    """The token-count row of one record whose image is ``size`` pixels."""
    text = _text_tokens(record, tokenizer, system) if tokenizer is not None else None
    image = tiling.image_tokens(*size) if IMAGE_TOKEN in record.prompt else 0
    return {
        "id": record.id,
        "width": size[0],
        "height": size[1],
        "tiles": tiling.tiles(*size),
        "text_tokens": text,
        "image_tokens": image,
        "total": (text or 0) + image,
    }


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the image header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read the image ({err}); run helpers.data.validate first") from err


def caption_lengths(ds: SampleSet) -> list[int]:
    """Characters in each record's caption (its gpt text), in record order.

    >>> min(caption_lengths(load_sample())) >= 8
    True
    """
    return [len(r.caption) for r in ds]


def token_counts(
    ds: SampleSet,
    tokenizer: Tokenizer | None = None,
    tiling: TilingSettings | None = None,
    system: str = XTUNER_SYSTEM,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Per record: image size, tiles, text tokens, image tokens and their total.

    Text tokens are what ``tokenizer`` gives for the training text in XTuner's
    InternVL internlm2-chat template (``<|im_start|>system\\n{system}<|im_end|>
    <|im_start|>user\\n{human}<|im_end|><|im_start|>assistant\\n{gpt}<|im_end|>``)
    without the image, plus BOS when the tokenizer has one; image tokens are
    computed, not tokenised: ``tiles x num_image_token + 2`` for ``<img>``/``</img>``,
    with the tiles InternVL2 picks for the image's real size under ``tiling``
    (default: InternVL2-2B's settings; pass ``TilingSettings.from_config(model_dir)``). Without a
    tokenizer ``text_tokens`` is ``None`` and ``total`` counts the image only.
    ``progress`` as in :func:`validate` (each image's size is read from its file).

    >>> row = token_counts(load_sample("eval"))[0]
    >>> row["image_tokens"] == row["tiles"] * 256 + 2
    True
    """
    tiling = tiling or TilingSettings()
    return [_count(r, tokenizer, _image_size(ds.image_path(r)), tiling, system) for r in _bar(ds, "counting", progress)]


def dataset_stats(
    ds: SampleSet,
    tokenizer: Tokenizer | None = None,
    tiling: TilingSettings | None = None,
    system: str = XTUNER_SYSTEM,
    progress: bool | None = None,
) -> dict[str, list]:
    """Columns for the book's histograms: ids, caption chars, tiles, text/image/total tokens, sizes.

    The dict of equal-length lists that :func:`helpers.plots.length_histograms` draws
    (and that ``pandas.DataFrame(stats)`` turns into a table, if you like).

    >>> sorted(dataset_stats(load_sample("eval")))[:3]
    ['caption_chars', 'height', 'id']
    """
    rows = token_counts(ds, tokenizer, tiling, system, progress)
    stats: dict[str, list] = {
        key: [row[key] for row in rows]
        for key in ("id", "width", "height", "tiles", "text_tokens", "image_tokens", "total")
    }
    stats["caption_chars"] = caption_lengths(ds)
    return stats


# --------------------------------------------------------------------------------------------
# converters


def _write_json(data: Any, path: Path) -> Path:
    """Write UTF-8 JSON (Chinese kept readable, 2-space indent), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def to_xtuner_json(ds: SampleSet, path: str | Path, *, absolute_images: bool = False) -> Path:
    """Write the records as XTuner's InternVL JSON (``image`` + ``conversations``) and return the path.

    Image paths stay relative to ``ds.root`` (set the config's ``image_folders``
    to it) unless ``absolute_images`` is True, which works with any image folder.

    >>> import tempfile; out = Path(tempfile.mkdtemp()) / "train.json"
    >>> load_dataset(to_xtuner_json(load_sample("eval"), out, absolute_images=True)).format
    'llava_json'
    """
    return _write_json([_export(ds, r, with_id=False, absolute=absolute_images) for r in ds], Path(path))


def to_llava_json(ds: SampleSet, path: str | Path, *, absolute_images: bool = False) -> Path:
    """Like :func:`to_xtuner_json`, with each record's ``id`` (the LLaVA layout).

    >>> import tempfile; out = Path(tempfile.mkdtemp()) / "llava.json"
    >>> json.loads(to_llava_json(load_sample("eval"), out).read_text())[0]["id"]
    'dogs_window'
    """
    return _write_json([_export(ds, r, with_id=True, absolute=absolute_images) for r in ds], Path(path))


def _export(ds: SampleSet, record: Record, with_id: bool, absolute: bool) -> dict[str, Any]:
    """A record's JSON dict for the converters, with an absolute image path if asked."""
    out = record.to_dict(with_id=with_id)
    if absolute:
        out["image"] = str(ds.image_path(record))
    return out


def to_clot_folder(ds: SampleSet, folder: str | Path) -> Path:
    """Write the records as a CLoT_cn_2000 folder (``ex_cn.json`` + ``ex_images/``) and return ``ex_cn.json``.

    Each image is copied into ``ex_images/`` under its own file name (prefixed
    with the record's position when two different images share a name), and
    the records point at the copies, whatever layout ``ds`` came from. Images
    already in ``folder`` are never overwritten by themselves.

    >>> import tempfile; path = to_clot_folder(load_sample("eval").subset([0, 1]), tempfile.mkdtemp())
    >>> load_dataset(path.parent).format, len(list((path.parent / "ex_images").iterdir()))
    ('clot', 2)
    """
    import shutil

    root = Path(folder)
    (root / "ex_images").mkdir(parents=True, exist_ok=True)
    taken: dict[str, Path] = {}
    records = []
    for i, record in enumerate(ds):
        source = ds.image_path(record)
        name = source.name if taken.get(source.name, source) == source else f"{i}_{source.name}"
        taken[name] = source
        target = root / "ex_images" / name
        if target.resolve() != source:
            shutil.copyfile(source, target)
        records.append({**record.to_dict(), "image": f"ex_images/{name}"})
    return _write_json(records, root / "ex_cn.json")


def to_swift_jsonl(ds: SampleSet, path: str | Path) -> Path:
    """Write ms-swift's JSONL (``query``, ``response``, ``images``; ``history`` for earlier turns).

    The ``<image>`` tag stays in the query, where ms-swift puts the image;
    image paths are absolute because ms-swift resolves them from its working folder.

    >>> import tempfile; out = Path(tempfile.mkdtemp()) / "swift.jsonl"
    >>> sorted(json.loads(to_swift_jsonl(load_sample("eval"), out).read_text().splitlines()[0]))
    ['images', 'query', 'response']
    """
    lines = []
    for record in ds:
        pairs = [(q.value, a.value) for q, a in zip(record.conversations[::2], record.conversations[1::2])]
        if not pairs:
            continue
        row: dict[str, Any] = {"query": pairs[-1][0], "response": pairs[-1][1], "images": [str(ds.image_path(record))]}
        if len(pairs) > 1:
            row["history"] = [list(p) for p in pairs[:-1]]
        lines.append(json.dumps(row, ensure_ascii=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.data validate PATH [--split S] [--model DIR --max-length N]``.

    Exit status 0 when the dataset is valid, 1 when it has problems (listed),
    2 when it cannot be read at all or ``--model`` is not a model folder.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.data")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a dataset; reports every problem, changes nothing")
    v.add_argument("path", nargs="?", default=str(SAMPLE_DATA_DIR))
    v.add_argument("--split", default=None)
    v.add_argument("--model", default=None, help="model directory whose tokenizer counts tokens")
    v.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args(argv)
    from .errors import BookError
    from .errors import report as report_error

    tokenizer, kwargs = None, {}
    try:
        if args.model:
            # read_config raises a ModelDirError that says what is wrong, before transformers tries
            kwargs = {"tiling": TilingSettings.from_config(args.model)}
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
        report = validate(args.path, split=args.split, tokenizer=tokenizer, max_length=args.max_length, **kwargs)
    except BookError as exc:
        return report_error(exc)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
