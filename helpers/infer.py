"""Ask InternVL2 about images: one small API over two backends, LMDeploy (GPU) and transformers (CPU or GPU).

Notebook ``02_baseline_inference`` teaches this module; notebook 07 reuses it
to compare the fine-tuned model with the baseline.

* ``lmdeploy``: ``lmdeploy.pipeline`` with a PyTorch or TurboMind engine
  config, ``session_len`` and an **explicit** :func:`chat_template_config`, so
  that a converted model directory never hits LMDeploy's
  ``failed to match chat template, please explicit set chat_template_config``.
  CUDA only.
* ``transformers``: the model's own remote-code ``chat()`` / ``batch_chat()``,
  fed with the dynamic tiling of :mod:`helpers.tiling`. CPU or GPU.
* ``auto``: LMDeploy when it imports and a GPU is there, otherwise
  transformers, with one line saying why.

The same :class:`GenSettings` (greedy by default) mean the same on both
backends, and the same prompt is rendered for both
(:func:`helpers.internvl.build_prompt`)::

    from helpers import infer, internvl
    pipe = infer.load("_build/outputs/models/tiny-internvl2")
    answer = pipe.ask("helpers/sample_data/clot_sample/ex_images/chelsea.jpg", internvl.COURSE_PROMPT)
    print(answer.text, answer.tokens, f"{answer.seconds:.2f} s")

Command line::

    python -m helpers.infer --model DIR --image IMG --prompt TEXT [--backend auto|lmdeploy|transformers]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import inspect
import json
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import repo_path
from .env import package_version
from .errors import BookError, ModelDirError
from .internvl import (
    COURSE_QUESTION,
    IMAGE_TOKEN,
    LMDEPLOY_IMAGE_TOKEN,
    TilingSettings,
    abbreviate,
    build_prompt,
    chat_template_fields,
    read_config,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .data import SampleSet

__all__ = [
    "BACKENDS",
    "ENGINES",
    "IMAGE_SUFFIXES",
    "DEFAULT_SESSION_LEN",
    "InferenceError",
    "ImageError",
    "PromptError",
    "SessionLengthError",
    "BackendError",
    "PromptWarning",
    "GenSettings",
    "Answer",
    "TokenStream",
    "Choice",
    "Pipeline",
    "TransformersPipeline",
    "LMDeployPipeline",
    "Chat",
    "chat_template_config",
    "load_image",
    "normalize_prompt",
    "choose_backend",
    "load",
    "answer_dataset",
    "save_answers",
    "load_answers",
    "main",
]

BACKENDS = ("auto", "lmdeploy", "transformers")
#: LMDeploy's two engines: PyTorch (Python + Triton kernels) and TurboMind (C++/CUDA extension).
ENGINES = ("pytorch", "turbomind")
#: File types the pipeline reads (what PIL decodes and photos come as).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: The course's ``TurbomindEngineConfig(session_len=8192)``.
DEFAULT_SESSION_LEN = 8192

# --------------------------------------------------------------------------- errors


# defined in helpers.errors with the book's other exceptions; infer.ImageError etc. are the same classes
from .errors import BackendError, ImageError, InferenceError, PromptError, SessionLengthError


class PromptWarning(UserWarning):
    """The prompt was changed on the way in (an ``<image>`` placeholder was inserted)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _warn(message: str, category: type[Warning] | None = None) -> None:
    """Issue a warning (a :class:`PromptWarning` by default) attributed to the first caller outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category or PromptWarning, stacklevel=level)


# --------------------------------------------------------------------------- generation settings


@dataclass(frozen=True)
class GenSettings:
    """Generation settings that mean the same on both backends.

    ``temperature=0`` (the default) is greedy decoding; a positive temperature
    samples, with ``top_p`` (1.0 = off) and ``top_k`` (0 = off). ``seed`` makes a
    sampled answer repeatable on one backend (the two backends' random streams
    differ). ``repetition_penalty`` divides the logits of tokens already
    generated (both backends count generated tokens only). ``ignore_eos`` keeps
    generating to ``max_new_tokens`` (for benchmarks).

    >>> GenSettings().transformers_kwargs()
    {'max_new_tokens': 128, 'do_sample': False, 'num_beams': 1, 'repetition_penalty': 1.0}
    >>> GenSettings().lmdeploy_kwargs()["do_sample"]
    False
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens!r} must be a positive integer")
        if not 0 <= self.temperature <= 2:
            problems.append(f"temperature={self.temperature} must be in [0, 2] (0 = greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1] (1 = off)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0 = off)")
        if problems:
            raise InferenceError("invalid generation settings: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy (``temperature == 0``)."""
        return self.temperature == 0

    def transformers_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``model.chat(..., generation_config)`` / ``generate()``.

        Greedy passes no sampling knobs (transformers warns about unused ones);
        ``top_k=0`` is passed as 0, which transformers also reads as "off"
        (leaving it out would mean transformers' default of 50).
        """
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": not self.greedy,
            "num_beams": 1,
            "repetition_penalty": float(self.repetition_penalty),
        }
        if not self.greedy:
            kw.update(temperature=float(self.temperature), top_p=float(self.top_p), top_k=int(self.top_k))
        if self.ignore_eos:
            kw["min_new_tokens"] = self.max_new_tokens
        return kw

    def lmdeploy_kwargs(self) -> dict[str, Any]:
        """The fields of ``lmdeploy.GenerationConfig`` that mean the same.

        LMDeploy's greedy mode ignores ``repetition_penalty``; greedy with a
        penalty is therefore sent as sampling from the single best token
        (``top_k=1``), which is greedy decoding with the penalty applied.
        """
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "random_seed": self.seed,
            "ignore_eos": self.ignore_eos,
        }
        if self.greedy and self.repetition_penalty == 1.0:
            kw.update(do_sample=False)
        elif self.greedy:
            kw.update(
                do_sample=True, temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=float(self.repetition_penalty)
            )
        else:
            kw.update(
                do_sample=True,
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                top_k=int(self.top_k),
                repetition_penalty=float(self.repetition_penalty),
            )
        return kw

    def to_lmdeploy(self) -> Any:
        """An ``lmdeploy.GenerationConfig`` built from :meth:`lmdeploy_kwargs` (needs lmdeploy)."""
        from lmdeploy import GenerationConfig

        return GenerationConfig(**self.lmdeploy_kwargs())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- model folder and chat template


def chat_template_config(model_path: str | Path | None = None, template: str | None = None) -> Any:
    """``lmdeploy.ChatTemplateConfig(**chat_template_fields(...))``: pass it to ``lmdeploy.pipeline``.

    Needs lmdeploy; without it, use :func:`chat_template_fields` to see the values.
    """
    try:
        from lmdeploy import ChatTemplateConfig
    except ImportError as exc:
        raise BackendError(
            "lmdeploy is not installed here, so there is no ChatTemplateConfig to build; "
            "chat_template_fields() returns the same values as a dict."
        ) from exc
    return ChatTemplateConfig(**chat_template_fields(model_path, template))


# --------------------------------------------------------------------------- inputs


def _image_path(image: str | Path) -> Path:
    path = Path(image).expanduser()
    if not path.is_absolute() and not path.exists():
        path = repo_path(path)  # notebooks run in notebooks/: paths relative to the repository also work
    return path


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """Open an image as RGB, or raise an :class:`ImageError` that says what to do.

    Accepts a PIL image or a path (absolute, relative to the working folder or
    to the repository) of one of :data:`IMAGE_SUFFIXES`.

    >>> load_image("no/such/picture.jpg")   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    helpers.errors.ImageError: image not found: ...picture.jpg...
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise ImageError(f"an image must be a file path or a PIL.Image, not {type(image).__name__}.")
    path = _image_path(image)
    if not path.exists():
        raise ImageError(
            f"image not found: {path}. Fix: check the path (relative paths are tried against "
            f"the working folder {Path.cwd()} and the repository root)."
        )
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file. Fix: name one image file inside it.")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(
            f"{path.name}: unsupported file type '{path.suffix or '(none)'}'. InternVL2 reads "
            f"images ({', '.join(IMAGE_SUFFIXES)}). Fix: convert it, e.g. "
            "PIL.Image.open(src).convert('RGB').save('image.png'), or export a frame/page as an image."
        )
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(
            f"cannot read {path}: {_one_line(exc)}. Fix: the file is damaged or not really a "
            f"{path.suffix} image; download or save it again."
        ) from exc


def normalize_prompt(prompt: str, n_images: int, history: Sequence[tuple[str, str]] = ()) -> str:
    """Check that the ``<image>`` placeholders match the images; insert the one that is missing.

    A prompt without ``<image>`` and one image gets ``<image>\\n`` in front (as
    InternVL2 was trained) and a :class:`PromptWarning` that says so. Any other
    mismatch is a :class:`PromptError`. Placeholders already in ``history``
    count: in a chat the image belongs to the first turn.

    >>> normalize_prompt("<image>\\n讲个梗", 1)
    '<image>\\n讲个梗'
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"the prompt is empty. Fix: ask a question, e.g. {COURSE_QUESTION!r}.")
    earlier = sum(q.count(IMAGE_TOKEN) for q, _ in history)
    tags = earlier + prompt.count(IMAGE_TOKEN)
    if tags == n_images:
        return prompt
    if tags == 0 and n_images == 1:
        _warn(
            "the prompt has no <image> placeholder: inserted '<image>\\n' before it, where InternVL2 expects the image."
        )
        return f"{IMAGE_TOKEN}\n{prompt}"
    where = " (counting the earlier turns)" if history else ""
    if n_images > tags:
        raise PromptError(
            f"{n_images} images were given but the prompt has {tags} <image> placeholder(s){where}. "
            "Fix: put one <image> per image, in order, e.g. 'Image-1: <image>\\nImage-2: <image>\\n"
            "What differs?', or pass fewer images."
        )
    raise PromptError(
        f"the prompt has {tags} <image> placeholder(s){where} but {n_images} image(s) were given. "
        "Fix: pass one image per <image>, or remove the extra placeholders."
    )


# --------------------------------------------------------------------------- results


@dataclass
class Answer:
    """One answer and what it cost.

    ``seconds`` is the wall time of the request; in a batch it is the batch's
    wall time divided by its size (time per image). ``first_token_s`` is the
    time from the start of the request (of the batch) to its first token,
    ``latency_s`` the time to its last token. ``tokens`` counts generated
    tokens (the stop token included, as the engines count them).
    """

    text: str
    prompt: str
    tokens: int
    prompt_tokens: int
    seconds: float
    first_token_s: float | None
    latency_s: float
    backend: str
    finish_reason: str = "stop"
    history: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time (``tokens / seconds``)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [list(turn) for turn in self.history]
        d["tokens_per_s"] = round(self.tokens_per_s, 2)
        return d

    def __str__(self) -> str:
        return self.text


class TokenStream:
    """Text pieces as they are generated; after the loop, ``.answer`` holds the :class:`Answer`.

    >>> # for piece in pipe.stream(image, prompt): print(piece, end="")   then: stream.answer.tokens
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        self.answer = yield from self._pieces

    def text(self) -> str:
        """Run the stream to the end and return the whole answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer.text


@dataclass
class _Request:
    images: list[Any]
    prompt: str
    history: list[tuple[str, str]]
    num_patches_list: list[int]
    full_prompt: str
    prompt_tokens: int


# --------------------------------------------------------------------------- backend choice


@dataclass(frozen=True)
class Choice:
    """The backend :func:`choose_backend` picked, the device, and one line saying why."""

    backend: str
    device: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def choose_backend(backend: str = "auto", device: str = "auto") -> Choice:
    """Decide which backend runs: ``auto`` takes LMDeploy when it can run, else transformers.

    ``backend='lmdeploy'`` on a machine where LMDeploy cannot run is a
    :class:`BackendError` saying why and what to do.

    >>> choose_backend("transformers", "cpu").backend
    'transformers'
    """
    from .env import probe_lmdeploy, resolve_device

    if backend not in BACKENDS:
        raise InferenceError(f"backend={backend!r} is unknown: use one of {', '.join(BACKENDS)}.")
    dev = resolve_device(device)
    if backend == "transformers":
        return Choice("transformers", dev, f"backend: transformers on {dev} (asked for).")
    if dev == "cpu":
        why = "LMDeploy needs a CUDA GPU and this run uses the CPU"
        if backend == "lmdeploy":
            raise BackendError(
                f"backend='lmdeploy' was asked for, but {why} (device={device!r}). "
                "Fix: use backend='transformers' (or 'auto'), or run on a machine with a CUDA GPU."
            )
        return Choice("transformers", dev, f"backend: transformers on cpu ({why}).")
    probe = probe_lmdeploy()
    if probe.ok:
        return Choice("lmdeploy", dev, f"backend: lmdeploy on {dev} ({probe.reason.rstrip('.')}).")
    if backend == "lmdeploy":
        raise BackendError(
            f"backend='lmdeploy' was asked for, but {probe.reason.rstrip('.')}. Fix: install "
            "LMDeploy in its own environment (on a CUDA machine `make gpu-env` makes .venv-serve and its "
            "kernel `book-serve`; LMDeploy needs transformers>=4.56), run this notebook in that kernel, or "
            "use backend='transformers' (or 'auto')."
        )
    return Choice(
        "transformers", dev, f"backend: transformers on {dev} (LMDeploy not used: {probe.reason.rstrip('.')})."
    )


# --------------------------------------------------------------------------- pipelines


class Pipeline:
    """What both backends share: prompts, tiling, checks, batching and chats.

    Use :func:`load` to get one. The public methods are :meth:`ask`,
    :meth:`stream`, :meth:`ask_batch`, :meth:`chat`, :meth:`render` and
    :meth:`close`; a pipeline is also a context manager.
    """

    backend = "base"

    def __init__(
        self,
        model_path: str | Path,
        *,
        session_len: int = DEFAULT_SESSION_LEN,
        max_num: int | None = None,
        device: str = "cpu",
        system: str | None = None,
    ) -> None:
        from .compat import official_config_on_transformers5

        #: True when helpers.compat's fix for the official InternVL2 config is in force (transformers >= 5)
        self.config_patched = official_config_on_transformers5()
        self.model_path = repo_path(model_path)
        self.config = read_config(self.model_path)
        self.template = chat_template_fields(template=self.config.get("template", "internlm2-chat"))
        if system is not None:  # another system message than the template's (InternVL2's own)
            self.template["meta_instruction"] = system
        #: how this pipeline tiles images: the model's settings, with ``max_num`` overridden if asked
        self.tiling = TilingSettings.from_config(self.config).with_max_num(max_num)
        if not isinstance(session_len, int) or session_len < 16:
            raise InferenceError(f"session_len={session_len!r}: use a token count such as 8192.")
        self.session_len = session_len
        self.device = device
        self.tokenizer = self._load_tokenizer()
        self.stop_ids = sorted(
            {
                i
                for i in self.tokenizer.convert_tokens_to_ids(self.template["stop_words"])
                if isinstance(i, int) and i >= 0
            }
        )

    # -- shared helpers
    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=True)
        except Exception as exc:
            raise ModelDirError(
                f"cannot load the tokenizer of {self.model_path}: {type(exc).__name__}: "
                f"{_one_line(exc)}. Fix: the folder needs tokenizer.json or tokenizer.model "
                "with tokenizer_config.json, as in the model's download."
            ) from exc

    def pixel_values(self, image: str | Path | Image.Image) -> Any:
        """The ``(tiles, 3, size, size)`` float tensor this pipeline feeds the vision encoder for ``image``.

        The pipeline's own preprocessing: use it (rather than tiling by hand)
        wherever a tensor must match what the model is asked with, e.g. for
        :func:`helpers.compare.perplexity_on_references`.
        """
        return self.tiling.pixel_values(load_image(image))

    def _request(
        self, images: Any, prompt: str, history: Sequence[tuple[str, str]] | None, gen: GenSettings
    ) -> _Request:
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        pil = [load_image(im) for im in images]
        history = [tuple(turn) for turn in (history or [])]
        for turn in history:
            if len(turn) != 2 or not all(isinstance(t, str) for t in turn):
                raise PromptError("history must be a list of (question, answer) string pairs, as Answer.history is.")
        prompt = normalize_prompt(prompt, len(pil), history)
        patches = [self.tiling.tiles(*im.size) for im in pil]
        full = build_prompt(
            [*history, (prompt, None)],
            tiles=patches,
            num_image_token=self.tiling.num_image_token,
            template=self.template,
        ).text
        n_prompt = len(self.tokenizer(full, verbose=False).input_ids)  # no "longer than max length" warning
        total = n_prompt + gen.max_new_tokens
        if total > self.session_len:
            raise SessionLengthError(
                f"the conversation needs {n_prompt} prompt tokens ({sum(patches)} image tiles x "
                f"{self.tiling.num_image_token} tokens, {len(history)} earlier turn(s)) + "
                f"max_new_tokens={gen.max_new_tokens} = {total} tokens, more than session_len={self.session_len}. "
                "Fix: start a new chat or drop old turns from the history, use fewer tiles per image "
                "(max_num), lower max_new_tokens, or raise session_len (InternVL2-2B was trained on 8192 "
                "tokens and accepts up to 32768)."
            )
        return _Request(pil, prompt, history, patches, full, n_prompt)

    def render(
        self,
        prompt: str,
        images: Any = None,
        history: Sequence[tuple[str, str]] | None = None,
        abbreviated: bool = True,
    ) -> str:
        """The prompt the language model reads for this request, with ``<IMG_CONTEXT>`` runs abbreviated."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PromptWarning)
            req = self._request(images, prompt, history, GenSettings(max_new_tokens=1))
        return abbreviate(req.full_prompt) if abbreviated else req.full_prompt

    # -- the public API
    def ask(
        self, images: Any, prompt: str, gen: GenSettings | None = None, history: Sequence[tuple[str, str]] | None = None
    ) -> Answer:
        """Answer one prompt about one image (or a list of images, or ``None``), optionally in a chat.

        ``history`` is a list of earlier ``(question, answer)`` pairs, e.g. the
        previous :attr:`Answer.history`; the images belong to the first turn and
        are passed again with every turn.
        """
        stream = self.stream(images, prompt, gen, history)
        stream.text()
        assert stream.answer is not None
        return stream.answer

    def stream(
        self, images: Any, prompt: str, gen: GenSettings | None = None, history: Sequence[tuple[str, str]] | None = None
    ) -> TokenStream:
        """Like :meth:`ask`, but yields text pieces while the model generates them."""
        gen = gen or GenSettings()
        req = self._request(images, prompt, history, gen)
        return TokenStream(self._stream(req, gen))

    def ask_batch(
        self,
        images: Sequence[Any],
        prompts: str | Sequence[str],
        gen: GenSettings | None = None,
        batch_size: int = 8,
        progress: bool = True,
        desc: str = "answering",
    ) -> list[Answer]:
        """Answer one prompt per image, ``batch_size`` at a time, with a progress bar.

        ``prompts`` is one prompt for all images or one per image. Every
        request is checked before the first batch runs.
        """
        from tqdm.auto import tqdm

        gen = gen or GenSettings()
        images = list(images)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise PromptError(
                f"{len(images)} images but {len(prompts)} prompts: give one prompt for all images or one per image."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InferenceError(f"batch_size={batch_size!r} must be a positive integer.")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptWarning)
            requests = [self._request(im, p, None, gen) for im, p in zip(images, prompts)]
        if caught:
            _warn(
                f"{len(caught)} prompt(s) had no <image> placeholder: inserted '<image>\\n' before "
                "them, where InternVL2 expects the image."
            )
        for i, req in enumerate(requests):
            if len(req.images) != 1:
                raise PromptError(
                    f"batch item {i} has {len(req.images)} images: ask_batch takes exactly one "
                    "image per prompt. Fix: use ask() for multi-image or text-only prompts."
                )
        # batch prompts of similar length together: less padding, same answers, returned in input order
        order = sorted(range(len(requests)), key=lambda i: requests[i].prompt_tokens)
        answers: list[Answer | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=desc, unit="image", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for i, answer in zip(chunk, self._batch([requests[i] for i in chunk], gen)):
                    answers[i] = answer
                bar.update(len(chunk))
        return answers  # type: ignore[return-value]

    def chat(self, images: Any = None, gen: GenSettings | None = None) -> Chat:
        """Start a multi-turn :class:`Chat` about ``images``."""
        return Chat(self, images, gen)

    def close(self) -> None:
        """Free the model (and LMDeploy's engine); the pipeline cannot be used afterwards."""

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={str(self.model_path)!r}, device={self.device!r}, "
            f"session_len={self.session_len}, max_num={self.tiling.max_num})"
        )

    # -- what a backend implements
    def _stream(self, req: _Request, gen: GenSettings) -> Iterator[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _batch(self, reqs: list[_Request], gen: GenSettings) -> list[Answer]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _answer(
        self,
        req: _Request,
        text: str,
        tokens: int,
        seconds: float,
        first: float | None,
        latency: float,
        finish: str | None = None,
    ) -> Answer:
        return Answer(
            text=text,
            prompt=req.prompt,
            tokens=tokens,
            prompt_tokens=req.prompt_tokens,
            seconds=seconds,
            first_token_s=first,
            latency_s=latency,
            backend=self.backend,
            finish_reason=finish or "stop",
            history=[*req.history, (req.prompt, text)],
        )


class Chat:
    """A multi-turn conversation about fixed images: each :meth:`ask` adds a turn to :attr:`history`."""

    def __init__(self, pipeline: Pipeline, images: Any = None, gen: GenSettings | None = None) -> None:
        self.pipeline = pipeline
        self.images = images
        self.gen = gen
        self.history: list[tuple[str, str]] = []

    def ask(self, prompt: str, gen: GenSettings | None = None) -> Answer:
        """Ask the next question; the answer is appended to the history."""
        answer = self.pipeline.ask(self.images, prompt, gen or self.gen, self.history)
        self.history = answer.history
        return answer

    def stream(self, prompt: str, gen: GenSettings | None = None) -> TokenStream:
        """Like :meth:`ask`, streaming; the history grows when the stream is exhausted."""
        inner = self.pipeline.stream(self.images, prompt, gen or self.gen, self.history)

        def pieces() -> Iterator[str]:
            yield from inner
            assert inner.answer is not None
            self.history = inner.answer.history
            return inner.answer

        return TokenStream(pieces())

    def render(self, prompt: str) -> str:
        """The abbreviated prompt the next turn would send."""
        return self.pipeline.render(prompt, self.images, self.history)


class _TokenClock:
    """A transformers streamer that counts each row's generated tokens and times the first and last."""

    def __init__(self, stop_ids: Sequence[int], rows: int = 1) -> None:
        self.stop_ids = set(stop_ids)
        self.counts = [0] * rows
        self.done = [False] * rows
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now
        for i, tok in enumerate(value.reshape(-1).tolist()[: len(self.counts)]):
            if not self.done[i]:
                self.counts[i] += 1
                self.done[i] = tok in self.stop_ids

    def end(self) -> None:
        self.last = self.last or time.perf_counter()

    @property
    def first_s(self) -> float | None:
        return None if self.first is None else self.first - self.start


class TransformersPipeline(Pipeline):
    """The model's remote-code ``chat()`` / ``batch_chat()`` on the CPU or a GPU.

    Images are tiled by :func:`helpers.tiling.image_to_pixel_values`, exactly
    as InternVL2's own ``load_image`` does. ``dtype`` defaults to bfloat16 on a
    GPU and float32 on the CPU.
    """

    backend = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        session_len: int = DEFAULT_SESSION_LEN,
        max_num: int | None = None,
        system: str | None = None,
    ) -> None:
        super().__init__(model_path, session_len=session_len, max_num=max_num, device=device, system=system)
        import torch
        import transformers
        from transformers import AutoModel

        if dtype is None:
            dtype = (
                "float32"
                if device == "cpu"
                else ("bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16")
            )
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            model = AutoModel.from_pretrained(
                self.model_path, trust_remote_code=True, low_cpu_mem_usage=True, **{key: self.dtype}
            )
            self.model = model.eval().to(device)
            # chat() and batch_chat() render their system turn from this attribute
            self.model.system_message = self.template["meta_instruction"]
        except Exception as exc:
            raise ModelDirError(
                f"transformers {transformers.__version__} cannot load {self.model_path}: "
                f"{type(exc).__name__}: {_one_line(exc)}. Fix: check that the folder is a "
                "complete InternVL2 download (weights, *.py remote code) and that it was "
                "written for this transformers version."
            ) from exc

        if not hasattr(getattr(model, "language_model", model), "generate"):
            raise BackendError(
                f"{self.model_path}'s language model cannot generate under transformers {transformers.__version__}: "
                "the official InternLM2 code relies on PreTrainedModel inheriting GenerationMixin and on tuple "
                "KV caches, which transformers no longer provides (4.50 and 5.x; seen with 5.17). Fix: run the "
                "transformers backend in the book's training environment (.venv, transformers 4.48), or use "
                "backend='lmdeploy' here."
            )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", dtype={str(self.dtype).replace('torch.', '')})"

    def _pixels(self, images: list[Any]) -> Any:
        if not images:
            return None
        import torch

        tiles = [self.tiling.pixel_values(im) for im in images]
        return torch.cat(tiles).to(device=self.device, dtype=self.dtype)

    def _seed(self, gen: GenSettings) -> None:
        if not gen.greedy and gen.seed is not None:
            import torch

            torch.manual_seed(gen.seed)

    def _stream(self, req: _Request, gen: GenSettings) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        clock = _TokenClock(self.stop_ids)

        class _Streamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                clock.put(value)
                super().put(value)

        streamer = _Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        pixels = self._pixels(req.images)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                self._seed(gen)
                result["out"] = self.model.chat(
                    self.tokenizer,
                    pixels,
                    req.prompt,
                    {**gen.transformers_kwargs(), "streamer": streamer},
                    history=list(req.history),
                    return_history=True,
                    num_patches_list=req.num_patches_list,
                )
            except BaseException as exc:
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, name="internvl-generate", daemon=True)
        clock.start = time.perf_counter()
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        clock.end()
        if "error" in result:
            raise result["error"]
        text, _ = result["out"]
        seconds = (clock.last or time.perf_counter()) - clock.start
        finish = "length" if clock.counts[0] >= gen.max_new_tokens and not clock.done[0] else "stop"
        return self._answer(req, text, clock.counts[0], seconds, clock.first_s, seconds, finish)

    def _batch(self, reqs: list[_Request], gen: GenSettings) -> list[Answer]:
        pixels = self._pixels([im for r in reqs for im in r.images])
        clock = _TokenClock(self.stop_ids, rows=len(reqs))
        self._seed(gen)
        clock.start = time.perf_counter()
        texts = self.model.batch_chat(
            self.tokenizer,
            pixels,
            [r.prompt for r in reqs],
            {**gen.transformers_kwargs(), "streamer": clock},
            num_patches_list=[sum(r.num_patches_list) for r in reqs],
        )
        clock.end()
        wall = (clock.last or time.perf_counter()) - clock.start
        out = []
        for i, (req, text) in enumerate(zip(reqs, texts)):
            finish = "length" if clock.counts[i] >= gen.max_new_tokens and not clock.done[i] else "stop"
            out.append(self._answer(req, text, clock.counts[i], wall / len(reqs), clock.first_s, wall, finish))
        return out

    def close(self) -> None:
        self.model = None


class LMDeployPipeline(Pipeline):
    """``lmdeploy.pipeline`` with an explicit engine config and chat template (CUDA only).

    ``engine`` is ``"pytorch"`` (``PytorchEngineConfig``) or ``"turbomind"``
    (``TurbomindEngineConfig``). ``cache_max_entry_count`` is the share of the
    GPU memory left after the weights that LMDeploy reserves for the KV cache
    (its default 0.8 takes most of the card).
    """

    backend = "lmdeploy"

    def __init__(
        self,
        model_path: str | Path,
        *,
        engine: str = "pytorch",
        session_len: int = DEFAULT_SESSION_LEN,
        max_num: int | None = None,
        cache_max_entry_count: float = 0.5,
        max_batch_size: int = 16,
        device: str = "cuda",
        log_level: str = "ERROR",
        system: str | None = None,
        **engine_options: Any,
    ) -> None:
        super().__init__(model_path, session_len=session_len, max_num=max_num, device=device, system=system)
        if engine not in ENGINES:
            raise InferenceError(f"engine={engine!r} is unknown: use 'pytorch' or 'turbomind'.")
        try:
            import lmdeploy
            from lmdeploy import ChatTemplateConfig, PytorchEngineConfig, TurbomindEngineConfig
        except Exception as exc:
            raise BackendError(
                f"lmdeploy does not import here ({type(exc).__name__}: {_one_line(exc)}). "
                "Fix: install it in its own environment (pip install lmdeploy) or use "
                "backend='transformers'."
            ) from exc
        self.engine = engine
        self.lmdeploy_version = getattr(lmdeploy, "__version__", package_version("lmdeploy"))
        if engine == "turbomind":
            # LMDeploy >= 0.6 silently falls back to its PyTorch engine when the TurboMind extension
            # does not load (e.g. CUDA 12 libraries missing): say so instead of running the other engine.
            try:
                import lmdeploy.turbomind as turbomind
            except ImportError:
                turbomind = None
            if turbomind is not None and hasattr(turbomind, "is_available") and not turbomind.is_available():
                error = getattr(turbomind, "_import_error", None)
                raise BackendError(
                    f"LMDeploy {self.lmdeploy_version}'s TurboMind extension does not load here: "
                    f"{type(error).__name__}: {_one_line(error) if error else 'unknown reason'}. It is built against "
                    "CUDA 12 (libcudart.so.12, libcublas.so.12). Fix: engine='pytorch', or install the CUDA 12 "
                    "runtime libraries (nvidia-cuda-runtime-cu12, nvidia-cublas-cu12)."
                ) from error
        config_cls = PytorchEngineConfig if engine == "pytorch" else TurbomindEngineConfig
        options = {
            "session_len": session_len,
            "cache_max_entry_count": cache_max_entry_count,
            "max_batch_size": max_batch_size,
            **engine_options,
        }
        self.backend_config = config_cls(**options)
        self.chat_template = ChatTemplateConfig(**self.template)
        kwargs: dict[str, Any] = {
            "backend_config": self.backend_config,
            "chat_template_config": self.chat_template,
            "log_level": log_level,
        }
        from .compat import config_needs_arguments

        if self.config_patched and config_needs_arguments(self.model_path):
            # LMDeploy checks its environment in a spawned process, which imports neither this module
            # nor the config fix; there the official config fails again (book/reference/inference-benchmarks.md).
            from lmdeploy.pytorch import envs

            envs.enable_check_env = False
        if "trust_remote_code" in inspect.signature(lmdeploy.pipeline).parameters:
            kwargs["trust_remote_code"] = True  # InternVL2's config class is remote code
        try:
            self.pipe = lmdeploy.pipeline(str(self.model_path), **kwargs)
        except Exception as exc:
            other = "turbomind" if engine == "pytorch" else "pytorch"
            raise BackendError(
                f"LMDeploy {self.lmdeploy_version} could not start its {engine} engine on {self.model_path}: "
                f"{type(exc).__name__}: {_one_line(exc)}. Fix: try engine='{other}', or backend='transformers'."
            ) from exc
        actual = getattr(getattr(self.pipe, "async_engine", None), "backend", engine)
        if actual != engine:  # a fallback we did not foresee: report the engine that really runs
            _warn(f"LMDeploy runs its {actual} engine, not the {engine} engine that was asked for.", UserWarning)
            self.engine = actual

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", engine={self.engine!r}, lmdeploy={self.lmdeploy_version})"

    def _messages(self, req: _Request) -> list[dict[str, Any]]:
        """OpenAI-style messages: images go with the first user turn, placed by ``<IMAGE_TOKEN>``."""
        params = {"max_dynamic_patch": self.tiling.max_num}
        image_items = [{"type": "image_data", "image_data": {"data": im, **params}} for im in req.images]
        turns = [*req.history, (req.prompt, None)]
        messages: list[dict[str, Any]] = []
        for i, (question, answer) in enumerate(turns):
            text = question.replace(IMAGE_TOKEN, LMDEPLOY_IMAGE_TOKEN)
            if i == 0 and image_items:
                messages.append({"role": "user", "content": [{"type": "text", "text": text}, *image_items]})
            else:
                messages.append({"role": "user", "content": text})
            if answer is not None:
                messages.append({"role": "assistant", "content": answer})
        return messages

    def _stream(self, req: _Request, gen: GenSettings) -> Iterator[str]:
        t0 = time.perf_counter()
        first = None
        text, tokens, finish = "", 0, None
        for out in self.pipe.stream_infer([self._messages(req)], gen_config=gen.to_lmdeploy()):
            if out.finish_reason == "error":
                raise InferenceError(
                    f"LMDeploy failed on this request: {getattr(out, 'error_message', '')}. "
                    "Fix: see the engine log above; a shorter prompt or fewer tiles may help."
                )
            tokens = max(tokens, out.generate_token_len or 0)
            if first is None and (tokens or out.token_ids or out.text):  # a token may decode to no text
                first = time.perf_counter() - t0
            if out.text:
                text += out.text
                yield out.text
            finish = out.finish_reason or finish
        seconds = time.perf_counter() - t0
        return self._answer(req, text.strip(), tokens, seconds, first, seconds, finish)

    def _batch(self, reqs: list[_Request], gen: GenSettings) -> list[Answer]:
        t0 = time.perf_counter()
        texts = [""] * len(reqs)
        tokens = [0] * len(reqs)
        firsts: list[float | None] = [None] * len(reqs)
        ends = [0.0] * len(reqs)
        finish: list[str | None] = [None] * len(reqs)
        for out in self.pipe.stream_infer([self._messages(r) for r in reqs], gen_config=gen.to_lmdeploy()):
            i = out.index
            now = time.perf_counter() - t0
            texts[i] += out.text
            tokens[i] = max(tokens[i], out.generate_token_len or 0)
            if firsts[i] is None and (tokens[i] or out.token_ids or out.text):
                firsts[i] = now
            finish[i] = out.finish_reason or finish[i]
            ends[i] = now
        wall = time.perf_counter() - t0
        return [
            self._answer(r, texts[i].strip(), tokens[i], wall / len(reqs), firsts[i], ends[i], finish[i])
            for i, r in enumerate(reqs)
        ]

    def close(self) -> None:
        pipe, self.pipe = getattr(self, "pipe", None), None
        if pipe is not None:
            pipe.close()


def load(
    model_path: str | Path,
    backend: str = "auto",
    *,
    device: str = "auto",
    engine: str = "pytorch",
    session_len: int = DEFAULT_SESSION_LEN,
    max_num: int | None = None,
    dtype: str | None = None,
    verbose: bool = True,
    system: str | None = None,
    **engine_options: Any,
) -> Pipeline:
    """Load an InternVL2 folder behind the backend :func:`choose_backend` picks; print why (``verbose``).

    ``engine`` (``pytorch``/``turbomind``) and ``engine_options`` (e.g.
    ``cache_max_entry_count``, ``max_batch_size``) go to LMDeploy; ``dtype``
    to transformers. ``max_num`` overrides the model's ``max_dynamic_patch``.
    ``system`` replaces the chat template's system message (InternVL2's own,
    :data:`helpers.internvl.INTERNVL_SYSTEM`) on both backends: LMDeploy gets
    it as the template's ``meta_instruction``, the model's ``chat()`` as its
    ``system_message``.

    >>> pipe = load("_build/outputs/models/tiny-internvl2", backend="transformers")   # doctest: +SKIP
    backend: transformers on cpu (asked for).
    """
    read_config(model_path)
    choice = choose_backend(backend, device)
    if verbose:
        print(choice.reason)
    if choice.backend == "lmdeploy":
        return LMDeployPipeline(
            model_path,
            engine=engine,
            session_len=session_len,
            max_num=max_num,
            device=choice.device,
            system=system,
            **engine_options,
        )
    return TransformersPipeline(
        model_path, device=choice.device, dtype=dtype, session_len=session_len, max_num=max_num, system=system
    )


# --------------------------------------------------------------------------- datasets and files


def answer_dataset(
    pipe: Pipeline,
    ds: SampleSet,
    gen: GenSettings | None = None,
    prompt: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every record of a dataset; one dict per record for :func:`save_answers`.

    Each dict holds ``split, id, image, prompt, reference, answer, seconds,
    tokens, prompt_tokens``. The prompt is the record's own first human turn
    unless ``prompt`` is given.
    """
    records = list(ds)
    prompts = [prompt or r.prompt for r in records]
    answers = pipe.ask_batch(
        [ds.image_path(r) for r in records],
        prompts,
        gen,
        batch_size=batch_size,
        progress=progress,
        desc=f"{split or ds.split or 'all'} split",
    )
    return [
        {
            "split": split or ds.split,
            "id": r.id,
            "image": r.image,
            "prompt": p,
            "reference": r.caption,
            "answer": a.text,
            "seconds": round(a.seconds, 4),
            "tokens": a.tokens,
            "prompt_tokens": a.prompt_tokens,
        }
        for r, p, a in zip(records, prompts, answers)
    ]


def save_answers(path: str | Path, rows: Sequence[dict[str, Any]], **meta: Any) -> Path:
    """Write ``{"created", **meta, "answers": rows}`` as UTF-8 JSON (what notebook 07 reads back)."""
    path = repo_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **meta, "answers": list(rows)}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def load_answers(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_answers`; a clear error if notebook 02 has not written it."""
    from .env import require

    path = require(path, "02")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.infer", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="InternVL2 model folder")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--prompt", default=COURSE_QUESTION, help="question (default: the course's)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--engine", default="pytorch", choices=ENGINES, help="LMDeploy engine")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--session-len", type=int, default=DEFAULT_SESSION_LEN)
    p.add_argument("--max-num", type=int, default=None, help="max tiles per image (default: the model's)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.infer``: answer one prompt; exit status 2 with one line on a :class:`BookError`."""
    from .errors import report

    args = _parser().parse_args(argv)
    try:
        gen = GenSettings(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptWarning)
            pipe = load(
                args.model,
                args.backend,
                device=args.device,
                engine=args.engine,
                session_len=args.session_len,
                max_num=args.max_num,
                verbose=not args.json,
            )
            with pipe:
                images = args.image or None
                if args.stream and not args.json:
                    stream = pipe.stream(images, args.prompt, gen)
                    for piece in stream:
                        print(piece, end="", flush=True)
                    print()
                    answer = stream.answer
                else:
                    answer = pipe.ask(images, args.prompt, gen)
        for w in caught:
            print(f"note: {w.message}", file=sys.stderr)
    except BookError as exc:
        return report(exc)
    assert answer is not None
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
    else:
        if not args.stream:
            print(answer.text)
        print(
            f"[{answer.backend}: {answer.tokens} tokens in {answer.seconds:.2f} s, "
            f"{answer.tokens_per_s:.1f} tokens/s, first token after {answer.first_token_s or 0:.2f} s]",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
