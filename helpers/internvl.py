"""What an InternVL2 model folder tells you, written down once for the whole book.

Every tool that feeds InternVL2 (XTuner's dataset, LMDeploy, the model's own
``chat()``, the book's metrics) must agree on four facts. This module is the
only place in ``helpers`` that states them:

* **the special tokens**: ``<image>`` in the data becomes ``<img>``, one
  ``<IMG_CONTEXT>`` per image feature, then ``</img>``; turns end with
  ``<|im_end|>`` (:data:`SPECIAL_TOKENS`);
* **the prompts**: the course's question (:data:`COURSE_PROMPT`), the system
  message XTuner trains with (:data:`XTUNER_SYSTEM`) and the one the model's
  ``chat()`` uses (:data:`INTERNVL_SYSTEM`); notebook 07's stronger baseline
  prompt (:data:`JOKE_SYSTEM`, :func:`few_shot_prompt`) and its plain
  description question (:data:`DESCRIBE_PROMPT`);
* **the chat template** named by ``config.json``'s ``template``
  (:data:`CHAT_TEMPLATES`, :func:`read_config`, :func:`chat_template_fields`);
* **the tiling settings** implied by ``config.json`` (:class:`TilingSettings`).

:func:`build_prompt` renders a conversation with them. The same function gives
the inference prompt (``.text``), the training ids with their label mask
(``.ids(tokenizer)``, encoded as XTuner encodes them) and the ids the
reference perplexity of notebook 07 scores.

The model's remote code (``helpers/remote_code``, shipped inside every model
folder) keeps its own copies, as the official code does: a model folder must
load with torch and transformers alone. The tests check that both agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import repo_path, tiling
from .errors import ModelDirError
from .remote_code.conversation import INTERNVL_SYSTEM_MESSAGE

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

__all__ = [
    "IMAGE_TOKEN",
    "IMG_START",
    "IMG_END",
    "IMG_CONTEXT",
    "IM_START",
    "IM_END",
    "LMDEPLOY_IMAGE_TOKEN",
    "SPECIAL_TOKENS",
    "ADDITIONAL_SPECIAL_TOKENS",
    "HF_CHAT_TEMPLATE",
    "COURSE_QUESTION",
    "COURSE_PROMPT",
    "XTUNER_SYSTEM",
    "INTERNVL_SYSTEM",
    "JOKE_SYSTEM",
    "FEW_SHOT_INTRO",
    "DESCRIBE_PROMPT",
    "few_shot_prompt",
    "CHAT_TEMPLATES",
    "read_config",
    "chat_template_fields",
    "TilingSettings",
    "Prompt",
    "build_prompt",
    "abbreviate",
]

# --------------------------------------------------------------------------- tokens

#: The placeholder a record or a question holds where its image goes.
IMAGE_TOKEN = "<image>"
#: What the placeholder becomes: ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens per tile) + ``</img>``.
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
#: InternLM2's turn delimiters.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: LMDeploy's placeholder for "put image i here" inside a text prompt (its ``IMAGE_TOKEN``).
LMDEPLOY_IMAGE_TOKEN = "<IMAGE_TOKEN>"
_TOOL_TOKENS = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>")
_GROUNDING_TOKENS = ("<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
#: Special tokens of InternVL2-2B in the official order (ids 92538-92552 there).
SPECIAL_TOKENS = (*_TOOL_TOKENS, IM_END, IM_START, IMG_START, IMG_END, IMG_CONTEXT, *_GROUNDING_TOKENS)
#: The ``additional_special_tokens`` list as the official ``tokenizer_config.json`` writes it.
ADDITIONAL_SPECIAL_TOKENS = (
    IM_START,
    IM_END,
    *reversed(_TOOL_TOKENS[2:]),
    *reversed(_TOOL_TOKENS[:2]),
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
    *_GROUNDING_TOKENS,
)
#: The ``chat_template`` of the official ``tokenizer_config.json`` (used by ``apply_chat_template``).
HF_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# --------------------------------------------------------------------------- prompts

#: The course's question (CLoT_cn_2000 asks it of every image): "tell a wildly imaginative joke about it".
COURSE_QUESTION = "请你根据这张图片，讲一个脑洞大开的梗"
#: The course's prompt as the data holds it: the image placeholder, a newline, the question.
COURSE_PROMPT = f"{IMAGE_TOKEN}\n{COURSE_QUESTION}"
#: The system message XTuner's ``InternVL_V1_5_Dataset`` hard-codes for InternLM2-based InternVL2.
XTUNER_SYSTEM = "You are an AI assistant whose name is InternLM (书生·浦语)."
#: The system message of InternVL2's own ``chat()`` (and of LMDeploy's template for it).
INTERNVL_SYSTEM = INTERNVL_SYSTEM_MESSAGE
#: The stronger baseline's system message (notebook 07): the task stated plainly, "you write Chinese meme
#: captions; answer with one short, surprising line, like a caption under the picture; do not describe it".
JOKE_SYSTEM = "你是一个擅长写中文梗图配文的助手。看图后只用一句简短、出人意料的话回答，像梗图下面的配文，不要描述图片。"
#: How the stronger baseline introduces its example captions: "here are examples of memes:".
FEW_SHOT_INTRO = "以下是梗的例子："
#: A plain description request, "please describe this picture": notebook 07's check for forgetting.
DESCRIBE_PROMPT = f"{IMAGE_TOKEN}\n请描述这张图片。"


def few_shot_prompt(examples: Sequence[str], question: str = COURSE_QUESTION) -> str:
    """The course's prompt with example captions (text only) before the question: in-context learning.

    The examples are captions of *other* images (from the training split), so
    the model sees the style and length it should answer in, not the answer.
    Pair it with :data:`JOKE_SYSTEM` as the system message for the stronger
    baseline of notebook 07.

    >>> print(few_shot_prompt(["住手！", "我没胖，是衣服缩水了"]))
    <image>
    以下是梗的例子：
    1. 住手！
    2. 我没胖，是衣服缩水了
    请你根据这张图片，讲一个脑洞大开的梗
    """
    lines = [FEW_SHOT_INTRO, *(f"{i}. {text.strip()}" for i, text in enumerate(examples, start=1))]
    return f"{IMAGE_TOKEN}\n" + "\n".join(lines) + f"\n{question}"


#: Chat templates by the ``template`` name in an InternVL2 ``config.json``, as LMDeploy
#: ``ChatTemplateConfig`` fields. LMDeploy 0.18 registers no InternVL2 template (0.5 called it
#: ``internvl2-internlm2``): ``ChatTemplateConfig.chat_template()`` builds its registered ``base``
#: template from the fields given, so every field must be passed. ``model_name="base"`` is that
#: template's registered name (an unknown name works too, after a "Could not find" warning; a
#: name alone, without the fields, silently gives an empty template).
CHAT_TEMPLATES: dict[str, dict[str, Any]] = {
    "internlm2-chat": {
        "model_name": "base",
        "system": f"{IM_START}system\n",
        "meta_instruction": INTERNVL_SYSTEM,
        "eosys": IM_END,
        "user": f"{IM_START}user\n",
        "eoh": IM_END,
        "assistant": f"{IM_START}assistant\n",
        "eoa": IM_END,
        "separator": "",
        "stop_words": [IM_END, IM_START],
    },
}


# --------------------------------------------------------------------------- the model folder


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_config(model_path: str | Path) -> dict[str, Any]:
    """Read and check an InternVL2 folder's ``config.json``; a :class:`ModelDirError` says what is wrong.

    >>> read_config("/nonexistent/InternVL2-2B")   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    helpers.errors.ModelDirError: /nonexistent/InternVL2-2B does not exist...
    """
    path = repo_path(model_path)
    if not path.exists():
        raise ModelDirError(
            f"{path} does not exist. Fix: build the tiny model there (python -m helpers.tiny --out {path}) "
            "or set model_path to the folder that holds InternVL2 (config.json, weights, tokenizer)."
        )
    if not path.is_dir():
        raise ModelDirError(
            f"{path} is a file; model_path must be the folder that holds config.json, "
            "the weights and the tokenizer files."
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelDirError(
            f"{path} has no config.json, so it is not a model folder. Fix: point model_path at "
            "an InternVL2 folder (e.g. a download of OpenGVLab/InternVL2-2B)."
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(
            f"{cfg_file} is not valid JSON ({_one_line(exc)}). Fix: restore the file from "
            "the model's original download."
        ) from exc
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if model_type != "internvl_chat" and "InternVLChatModel" not in archs:
        raise ModelDirError(
            f"{path} holds a {model_type or 'model of unknown type'} model "
            f"({', '.join(archs) or 'no architectures listed'}), not InternVL2. This pipeline needs a "
            "config.json with model_type 'internvl_chat' (InternVLChatModel). Fix: point model_path at an "
            "InternVL2 folder, such as OpenGVLab/InternVL2-2B or the merged model of notebook 06."
        )
    template = cfg.get("template", "internlm2-chat")
    if template not in CHAT_TEMPLATES:
        raise ModelDirError(
            f"{path} uses the chat template {template!r}; the book knows {sorted(CHAT_TEMPLATES)} "
            "(InternVL2-2B/8B/26B). Fix: add the template's fields to helpers.internvl.CHAT_TEMPLATES."
        )
    return cfg


def chat_template_fields(model_path: str | Path | None = None, template: str | None = None) -> dict[str, Any]:
    """The explicit ``ChatTemplateConfig`` fields for a model's chat template (a plain dict).

    Reads ``template`` from the model's ``config.json`` (``internlm2-chat`` for
    InternVL2-2B). Passing these fields, rather than relying on the name
    matching LMDeploy does on the folder name, is what makes a converted model
    load with the right template.

    >>> f = chat_template_fields(template="internlm2-chat")
    >>> f["user"], f["eoh"], f["assistant"]
    ('<|im_start|>user\\n', '<|im_end|>', '<|im_start|>assistant\\n')
    """
    if template is None:
        template = read_config(model_path).get("template", "internlm2-chat") if model_path else "internlm2-chat"
    if template not in CHAT_TEMPLATES:
        raise ModelDirError(f"unknown chat template {template!r}; known: {sorted(CHAT_TEMPLATES)}")
    fields = dict(CHAT_TEMPLATES[template])
    fields["stop_words"] = list(fields["stop_words"])
    return fields


# --------------------------------------------------------------------------- tiling settings


@dataclass(frozen=True)
class TilingSettings:
    """How a model cuts images into tiles and how many tokens a tile costs, read from ``config.json``.

    ``num_image_token`` is ``(image_size / patch_size)² x downsample_ratio²``
    (256 for InternVL2-2B: 448-px tiles, 14-px patches, pixel shuffle 0.5).
    The tiling rule itself lives in :mod:`helpers.tiling`.

    >>> s = TilingSettings()            # InternVL2-2B's values
    >>> s.tiles(1000, 500), s.image_tokens(1000, 500)
    (3, 770)
    """

    num_image_token: int = 256
    max_num: int = 12
    min_num: int = 1
    image_size: int = 448
    use_thumbnail: bool = True

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any]) -> TilingSettings:
        """The settings of a model folder (or of its ``config.json`` already read, as a dict).

        >>> from helpers import tiny
        >>> TilingSettings.from_config(tiny.model_config("internvl2-2b")).num_image_token
        256
        """
        cfg = config if isinstance(config, Mapping) else read_config(config)
        size = cfg.get("force_image_size") or cfg["vision_config"]["image_size"]
        patch = cfg["vision_config"]["patch_size"]
        return cls(
            num_image_token=int((size // patch) ** 2 * cfg["downsample_ratio"] ** 2),
            max_num=int(cfg.get("max_dynamic_patch", 12)),
            min_num=int(cfg.get("min_dynamic_patch", 1)),
            image_size=int(size),
            use_thumbnail=bool(cfg.get("use_thumbnail", True)),
        )

    def with_max_num(self, max_num: int | None) -> TilingSettings:
        """The same settings with another tile limit (``None`` keeps this one).

        >>> TilingSettings().with_max_num(1).tiles(1000, 500)
        1
        """
        return self if max_num is None else replace(self, max_num=int(max_num))

    def plan(self, width: int, height: int) -> tiling.TilePlan:
        """The grid (and thumbnail) for a ``width`` x ``height`` image."""
        return tiling.plan_tiles(
            width,
            height,
            min_num=self.min_num,
            max_num=self.max_num,
            image_size=self.image_size,
            use_thumbnail=self.use_thumbnail,
        )

    def tiles(self, width: int, height: int) -> int:
        """Tiles fed to the vision encoder, thumbnail included."""
        return self.plan(width, height).num_tiles

    def image_tokens(self, width: int, height: int) -> int:
        """Prompt tokens the image costs: ``<img>`` + tiles x ``num_image_token`` ``<IMG_CONTEXT>`` + ``</img>``."""
        return self.tiles(width, height) * self.num_image_token + 2

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """The normalised ``(tiles, 3, image_size, image_size)`` tensor the vision encoder reads."""
        return tiling.image_to_pixel_values(
            image,
            max_num=self.max_num,
            image_size=self.image_size,
            use_thumbnail=self.use_thumbnail,
            min_num=self.min_num,
        )


# --------------------------------------------------------------------------- prompts


class Tokenizer(Protocol):
    """Anything with ``encode(text, add_special_tokens=...) -> list``: a HF tokenizer or a fake."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list:  # pragma: no cover
        ...


@dataclass(frozen=True)
class Prompt:
    """A rendered conversation, cut where the learned text starts and stops.

    ``segments`` alternate: even ones are inputs (system turn, user turn and the
    assistant header), odd ones are answers with their end-of-turn token. The
    last segment is an input when the conversation ends with a question.
    """

    segments: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole prompt as one string: what ``chat()`` and LMDeploy read."""
        return "".join(self.segments)

    def ids(self, tokenizer: Tokenizer, ignore_index: int = -100) -> tuple[list[int], list[int]]:
        """``input_ids`` and ``labels``, encoded as XTuner's InternVL dataset encodes them.

        Each segment is encoded on its own, the first with the tokenizer's
        special tokens (BOS); inputs are masked with ``ignore_index`` in the
        labels, so only the answers and their ``<|im_end|>`` are learned.
        """
        input_ids: list[int] = []
        labels: list[int] = []
        for i, segment in enumerate(self.segments):
            ids = list(tokenizer.encode(segment, add_special_tokens=(i == 0)))
            input_ids += ids
            labels += ids if i % 2 else [ignore_index] * len(ids)
        return input_ids, labels


def build_prompt(
    turns: Sequence[tuple[str, str | None]],
    *,
    tiles: Sequence[int] | None = None,
    num_image_token: int = 256,
    system: str | None = None,
    template: str | Mapping[str, Any] = "internlm2-chat",
) -> Prompt:
    """Render a conversation in a chat template, each ``<image>`` expanded into its image tokens.

    ``turns`` are ``(question, answer)`` pairs; the last answer may be ``None``
    for a prompt that asks the model to answer. ``system`` defaults to the
    template's own (InternVL2's ``chat()`` message); pass :data:`XTUNER_SYSTEM`
    for what XTuner trains with. The i-th ``<image>`` becomes ``<img>``,
    ``tiles[i] * num_image_token`` ``<IMG_CONTEXT>`` and ``</img>``; with
    ``tiles=None`` the placeholders stay (LMDeploy expands them itself).

    >>> p = build_prompt([("<image>\\n讲个梗", None)], tiles=[3], num_image_token=64, system="")
    >>> abbreviate(p.text)
    '<|im_start|>system\\n<|im_end|><|im_start|>user\\n<img><IMG_CONTEXT>×192</img>\\n讲个梗<|im_end|><|im_start|>assistant\\n'
    >>> build_prompt([("q", "a")], system="S").segments
    ('<|im_start|>system\\nS<|im_end|><|im_start|>user\\nq<|im_end|><|im_start|>assistant\\n', 'a<|im_end|>')
    """
    f = CHAT_TEMPLATES[template] if isinstance(template, str) else template
    meta = f["meta_instruction"] if system is None else system
    segments: list[str] = []
    pending = f"{f['system']}{meta}{f['eosys']}"
    for question, answer in turns:
        pending += f"{f['user']}{question}{f['eoh']}{f['assistant']}"
        if answer is not None:
            segments += [pending, f"{answer}{f['eoa']}"]
            pending = f["separator"]
    if pending or not segments:
        segments.append(pending)
    if tiles is not None:
        segments = _expand_images(segments, tiles, num_image_token)
    return Prompt(tuple(segments))


def _expand_images(segments: list[str], tiles: Sequence[int], num_image_token: int) -> list[str]:
    """Replace the i-th ``<image>`` (across segments, in order) by its ``<img>…</img>`` run."""
    runs = iter(IMG_START + IMG_CONTEXT * (n * num_image_token) + IMG_END for n in tiles)
    out = []
    for segment in segments:
        parts = segment.split(IMAGE_TOKEN)
        text = parts[0]
        for part in parts[1:]:
            text += next(runs, IMAGE_TOKEN) + part
        out.append(text)
    return out


def abbreviate(prompt: str) -> str:
    """Shorten every run of ``<IMG_CONTEXT>`` to ``<IMG_CONTEXT>×N`` for display.

    >>> abbreviate("<img>" + "<IMG_CONTEXT>" * 256 + "</img>")
    '<img><IMG_CONTEXT>×256</img>'
    """
    return re.sub(
        f"(?:{re.escape(IMG_CONTEXT)})+", lambda m: f"{IMG_CONTEXT}×{len(m.group(0)) // len(IMG_CONTEXT)}", prompt
    )
