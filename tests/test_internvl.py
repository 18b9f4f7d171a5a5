"""helpers.internvl: the one place for tokens, prompts, chat templates and tiling settings."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from helpers import REPO_DIR, internvl, tiling, tiny
from helpers.errors import ModelDirError

# The facts this module owns, as literals nobody else may write down.
FACTS = [
    internvl.IMG_CONTEXT,
    internvl.IMG_START,
    internvl.IMG_END,
    internvl.IM_START,
    internvl.IM_END,
    internvl.COURSE_QUESTION,
    internvl.XTUNER_SYSTEM,
    internvl.JOKE_SYSTEM,
    internvl.FEW_SHOT_INTRO,
]


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a Python file that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_each_token_and_prompt_is_written_down_once():
    """Outside helpers/internvl.py (and the model's own remote code), no code spells a token or prompt."""
    offenders = []
    for folder in ("helpers", "benchmarks", "tools"):
        for path in sorted((REPO_DIR / folder).rglob("*.py")):
            if {"remote_code", "official_code"} & set(path.parts) or path.name == "internvl.py":
                continue
            offenders += [
                f"{path.relative_to(REPO_DIR)}:{line} {text[:50]!r}"
                for line, text in _code_strings(path)
                if any(fact in text for fact in FACTS)
            ]
    assert not offenders, "use helpers.internvl's constants instead:\n" + "\n".join(offenders)


def test_the_course_prompt_is_the_placeholder_and_the_question():
    assert internvl.COURSE_PROMPT == "<image>\n请你根据这张图片，讲一个脑洞大开的梗"
    assert internvl.COURSE_PROMPT.startswith(internvl.IMAGE_TOKEN)


def test_few_shot_prompt_puts_the_examples_between_the_image_and_the_question():
    prompt = internvl.few_shot_prompt([" 住手！", "我没胖"])
    assert prompt.startswith(internvl.IMAGE_TOKEN + "\n" + internvl.FEW_SHOT_INTRO)
    assert prompt.endswith("1. 住手！\n2. 我没胖\n" + internvl.COURSE_QUESTION)
    assert prompt.count(internvl.IMAGE_TOKEN) == 1  # text-only examples: one image, the one asked about
    assert internvl.DESCRIBE_PROMPT.startswith(internvl.IMAGE_TOKEN)


def test_training_and_inference_prompts_share_one_renderer():
    turns = [("<image>\n讲个梗", "好"), ("再来", None)]
    prompt = internvl.build_prompt(turns, tiles=[2], num_image_token=3, system="S")
    assert prompt.segments == (
        "<|im_start|>system\nS<|im_end|><|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 6 + "</img>\n讲个梗<|im_end|>"
        "<|im_start|>assistant\n",
        "好<|im_end|>",
        "<|im_start|>user\n再来<|im_end|><|im_start|>assistant\n",
    )
    kept = internvl.build_prompt(turns, system="S")  # tiles=None: LMDeploy expands <image> itself
    assert kept.text.count(internvl.IMAGE_TOKEN) == 1 and internvl.IMG_CONTEXT not in kept.text
    assert internvl.build_prompt([("q", None)]).text.startswith(f"<|im_start|>system\n{internvl.INTERNVL_SYSTEM}")


class CharTokenizer:
    """One id per character; BOS (1) with special tokens."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


def test_ids_mask_everything_but_the_answers():
    prompt = internvl.build_prompt([("q", "ab"), ("r", "c")], system="")
    ids, labels = prompt.ids(CharTokenizer())
    assert ids[0] == 1 and len(ids) == len(labels) == len(prompt.text) + 1
    learned = "".join(chr(i) for i in labels if i != -100)
    assert learned == "ab<|im_end|>c<|im_end|>"


def test_tiling_settings_from_the_real_config():
    cfg = tiny.model_config("internvl2-2b")
    s = internvl.TilingSettings.from_config(cfg)
    assert (s.num_image_token, s.max_num, s.min_num, s.image_size, s.use_thumbnail) == (256, 12, 1, 448, True)
    assert s.image_tokens(451, 300) == tiling.image_token_count(451, 300) == 7 * 256 + 2
    assert s.with_max_num(1).tiles(451, 300) == 1 and s.with_max_num(None) is s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_num = 6  # frozen: one value per model, changed only through with_max_num


def test_tiling_settings_of_a_model_folder(tiny_model_dir):
    from PIL import Image

    s = internvl.TilingSettings.from_config(tiny_model_dir)
    cfg = json.loads((tiny_model_dir / "config.json").read_text(encoding="utf-8"))
    vis = cfg["vision_config"]
    assert s.num_image_token == (vis["image_size"] // vis["patch_size"]) ** 2 * cfg["downsample_ratio"] ** 2 < 256
    image = Image.new("RGB", (900, 450))
    assert s.pixel_values(image).shape[0] == s.tiles(900, 450) == 3
    with pytest.raises(ModelDirError, match="does not exist"):
        internvl.TilingSettings.from_config(tiny_model_dir / "missing")
