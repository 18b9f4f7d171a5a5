"""Write XTuner's QLoRA config for InternVL2 from parameters.

The course trains with one XTuner config file,
``internvl_v2_internlm2_2b_qlora_finetune.py``, edited by hand. Here the same
file is *generated* from a :class:`Recipe`, whose defaults are the course's
values (seed 000: LoRA r=128, alpha=256 on the language model, 4-bit NF4
base, batch 4 x accumulation 4, ``max_length`` 6656, lr 2e-5, 6 epochs, fp16
``AmpOptimWrapper``, ``LengthGroupedSampler``, checkpoints every 1000
iterations). Things the hardware forces (no fp16 AMP on a CPU, ...) are
applied by :func:`fit_to_hardware`, which returns each change with its
reason, so nothing changes silently. :func:`validate` rejects impossible
values with a message that says what to do.

The file written is an ordinary XTuner config: ``xtuner train FILE`` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import pprint
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BookError, ProfileError
from .params import Problem

OPTIMIZERS = {
    # name -> (import line, class name, extra keyword arguments for the optimizer)
    "AdamW": ("from torch.optim import AdamW", "AdamW", {}),
    # DAdaptAdam (seed 004): learning-rate-free Adam; lr is a multiplier, 1.0 by convention
    "DAdaptAdam": ("from dadaptation import DAdaptAdam", "DAdaptAdam", {"decouple": True}),
}


@dataclass
class Recipe:
    """Every value of the QLoRA config; defaults are the course's (seed 000).

    >>> r = Recipe(model_path="/m", data_path="/d/ex_cn.json", image_folder="/d")
    >>> r.lora_r, r.lora_alpha, r.batch_size * r.accumulative_counts, r.lr
    (128, 256, 16, 2e-05)
    """

    model_path: str
    data_path: str
    image_folder: str
    max_length: int = 6656
    # model
    freeze_llm: bool = True
    freeze_visual_encoder: bool = True
    quantization_llm: bool = True
    quantization_vit: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: every linear layer of the LLM (XTuner's default)
    # optimisation
    batch_size: int = 4
    accumulative_counts: int = 4
    dataloader_num_workers: int = 4
    persistent_workers: bool = False  # keep the loader's workers between epochs (the course: off)
    max_epochs: float = 6
    max_iters: int | None = None  # set it to stop after a number of iterations instead of epochs
    optimizer: str = "AdamW"
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    max_norm: float = 1.0
    warmup_ratio: float = 0.03
    amp_dtype: str | None = "float16"  # AmpOptimWrapper dtype; None: full-precision OptimWrapper
    # speed levers applied by the book's launcher (helpers.xtuner_launch); XTuner itself ignores them
    attention: str = "eager"  # 'sdpa': PyTorch's fused attention for the official code (helpers.compat)
    bnb_compute_dtype: str = "float16"  # the 4-bit layers' compute dtype (XTuner hard-codes float16)
    lm_head: str = "4bit"  # 'bf16': the LM head stays out of 4-bit (give lora_targets without 'output')
    checkpoint: str = "default"  # gradient checkpointing: 'default' (PyTorch's), 'reentrant', 'non-reentrant'
    checkpoint_every: int = 1  # checkpoint every Nth LLM layer (1: all, the course; 2: every other one)
    loss_logits: str = "all"  # 'labelled': the loss from logits of the labelled (answer) tokens only
    epoch_pause: float = 0.0  # seconds mmengine's loop sleeps at each pass over the data (its own: 2)
    torch_compile: str = "none"  # 'layers': torch.compile each transformer layer (helpers.compile_layers; GPU)
    step_timing: str | None = None  # a JSON file: time whole optimizer steps (helpers.timing.StepTimerHook)
    # checkpoints and logs
    save_steps: int = 1000
    save_total_limit: int = 1
    save_optimizer: bool = True  # the course saved without it; we keep it so that resume is exact
    log_interval: int = 10
    seed: int | None = 0  # the course used None (random); a fixed seed makes runs repeatable
    dist_backend: str = "nccl"
    extra: dict[str, Any] = field(default_factory=dict)

    def changed(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated when written)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read back the ``recipe.json`` that :func:`write` saves beside the config (or the folder holding it).

        Later notebooks use it to know how the run was configured (``max_iters``,
        ``save_steps``, ``lora_r`` ...) as a :class:`Recipe`, not a loose dict.
        A missing file or a field this version does not know is a
        :class:`BookError`.

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write(Recipe("/m", "/d.json", "/d", lora_r=8, lora_alpha=16), folder / "config.py", check_dataset=False)
        >>> Recipe.load(folder).lora_r, Recipe.load(folder / "recipe.json").betas
        (8, (0.9, 0.999))
        """
        path = Path(path)
        if path.is_dir():
            path = path / "recipe.json"
        if not path.is_file():
            raise BookError(
                f"{path} does not exist: helpers.config.write(recipe, config_path) writes it beside "
                "the XTuner config (notebook 03)."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BookError(f"{path} is not valid JSON ({exc}); write it again with helpers.config.write.") from exc
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names) if isinstance(data, dict) else []
        if not isinstance(data, dict) or unknown:
            raise BookError(
                f"{path} is not a recipe written by helpers.config.write"
                + (f": unknown fields {unknown}." if unknown else ".")
            )
        if isinstance(data.get("betas"), list):
            data["betas"] = tuple(data["betas"])  # JSON has no tuples
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise BookError(f"{path} is not a complete recipe ({exc}).") from exc


#: The course's own values where they differ from Recipe's defaults (seed 000 used these).
COURSE_DIFFERENCES = {
    "save_optimizer": (False, "saved with the optimizer so an interrupted run resumes exactly"),
    "seed": (None, "a fixed seed makes two runs of the same recipe give the same loss curve"),
}


@dataclass(frozen=True)
class Override:
    """One change :func:`fit_to_hardware` made, and why."""

    field: str
    before: Any
    after: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.before!r} -> {self.after!r} ({self.reason})"


#: The rule of each numeric or named field: (passes, rule and fix). The one place these rules live;
#: the runner checks the notebooks' training parameters with them before it runs anything.
_RULES: dict[str, tuple[Any, str]] = {
    "lora_r": (lambda v: v > 0, "the LoRA rank must be a positive integer, e.g. 8, 64 or 128"),
    "lora_alpha": (lambda v: v > 0, "LoRA alpha must be positive; the course uses 2 x lora_r"),
    "lora_dropout": (lambda v: 0 <= v < 1, "dropout is a probability in [0, 1)"),
    "lr": (lambda v: v > 0, "the learning rate must be positive (AdamW: ~1e-5..1e-4; DAdaptAdam: 1.0)"),
    "batch_size": (lambda v: v >= 1, "use at least 1 sample per device"),
    "accumulative_counts": (lambda v: v >= 1, "use 1 for no gradient accumulation"),
    "max_epochs": (lambda v: v >= 0, "the number of epochs cannot be negative"),
    "max_iters": (lambda v: v is None or v >= 1, "use None or a positive integer"),
    "save_steps": (lambda v: v >= 1, "checkpoint every N >= 1 iterations"),
    "log_interval": (lambda v: v >= 1, "log every N >= 1 iterations"),
    "max_length": (lambda v: v > 0, "max_length is a number of tokens, e.g. 6656"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "warmup is a fraction of training in [0, 1)"),
    "amp_dtype": (lambda v: v in (None, "float16", "bfloat16"), "use 'float16', 'bfloat16' or None"),
    "attention": (lambda v: v in ("eager", "sdpa"), "use 'eager' (the official code's own) or 'sdpa'"),
    "bnb_compute_dtype": (lambda v: v in ("float16", "bfloat16"), "use 'float16' (XTuner's) or 'bfloat16'"),
    "lm_head": (lambda v: v in ("4bit", "bf16"), "use '4bit' (XTuner's) or 'bf16'"),
    "checkpoint": (
        lambda v: v in ("default", "reentrant", "non-reentrant"),
        "use 'default', 'reentrant' or 'non-reentrant'",
    ),
    "checkpoint_every": (lambda v: v >= 1, "checkpoint every Nth layer, N >= 1"),
    "loss_logits": (lambda v: v in ("all", "labelled"), "use 'all' (XTuner's) or 'labelled'"),
    "epoch_pause": (lambda v: v >= 0, "use 0 (the book's: no pause) or mmengine's 2 seconds"),
    "torch_compile": (lambda v: v in ("none", "layers"), "use 'none' (XTuner's) or 'layers' (a GPU speed lever)"),
    "dataloader_num_workers": (lambda v: v >= 0, "use 0 (load in the training process) or more worker processes"),
    "dist_backend": (lambda v: v in ("nccl", "gloo"), "use 'nccl' (GPUs) or 'gloo' (CPU)"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"unknown optimizer: use one of {sorted(OPTIMIZERS)}"),
}
#: The type each checked field needs (``int`` fields accept no floats, numbers accept no bools).
_TYPES: dict[str, tuple[type, ...]] = {
    "lora_r": (int,),
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "lr": (int, float),
    "batch_size": (int,),
    "accumulative_counts": (int,),
    "max_epochs": (int, float),
    "max_iters": (int, type(None)),
    "save_steps": (int,),
    "log_interval": (int,),
    "max_length": (int,),
    "warmup_ratio": (int, float),
    "amp_dtype": (str, type(None)),
    "attention": (str,),
    "bnb_compute_dtype": (str,),
    "lm_head": (str,),
    "checkpoint": (str,),
    "checkpoint_every": (int,),
    "dataloader_num_workers": (int,),
    "loss_logits": (str,),
    "epoch_pause": (int, float),
    "torch_compile": (str,),
    "persistent_workers": (bool,),
    "dist_backend": (str,),
    "optimizer": (str,),
    "quantization_llm": (bool,),
    "freeze_llm": (bool,),
}


def problems(recipe: Recipe, min_sample_tokens: int | None = None) -> list[Problem]:
    """Every field of ``recipe`` that cannot work, each with its rule and fix (an empty list when all can).

    ``min_sample_tokens`` is the token count of the shortest possible sample
    (one image's tokens plus the prompt); a ``max_length`` below it would cut
    every image.

    >>> for p in problems(Recipe("/m", "/d.json", "/d", lora_r=-5, lr=0)):
    ...     print(p)
    lora_r=-5: the LoRA rank must be a positive integer, e.g. 8, 64 or 128.
    lr=0: the learning rate must be positive (AdamW: ~1e-5..1e-4; DAdaptAdam: 1.0).
    """
    out: list[Problem] = []
    for name, kinds in _TYPES.items():
        value = getattr(recipe, name)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            out.append(Problem(name, value, f"must be {wanted}, not {type(value).__name__}"))
        elif name in _RULES and not _RULES[name][0](value):
            out.append(Problem(name, value, _RULES[name][1]))
    if not out and not (recipe.max_epochs > 0 or (recipe.max_iters or 0) > 0):
        out.append(Problem("max_epochs", recipe.max_epochs, "train for at least some steps (max_epochs or max_iters)"))
    if recipe.quantization_llm is True and recipe.freeze_llm is False:
        out.append(
            Problem(
                "quantization_llm",
                True,
                "a 4-bit LLM cannot be trained in full: keep freeze_llm=True and train LoRA adapters",
            )
        )
    if min_sample_tokens is not None and isinstance(recipe.max_length, int) and recipe.max_length < min_sample_tokens:
        out.append(
            Problem(
                "max_length",
                recipe.max_length,
                f"shorter than one sample ({min_sample_tokens} tokens: the image tokens plus the prompt), so every "
                f"image would be cut off; raise max_length to at least {min_sample_tokens} (the course uses 6656) or "
                "lower max_dynamic_patch in the model config",
            )
        )
    return out


def validate(recipe: Recipe, min_sample_tokens: int | None = None) -> None:
    """Raise :class:`BookError` naming every field that cannot work and its fix (see :func:`problems`).

    >>> validate(Recipe("/m", "/d.json", "/d", lora_r=0))   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    helpers.errors.BookError: lora_r=0: ...
    """
    found = problems(recipe, min_sample_tokens)
    if found:
        raise BookError("\n".join(str(p) for p in found))


#: The DeepSpeed configs XTuner ships (``xtuner/configs/deepspeed/NAME.json``), for ``--deepspeed NAME``.
DEEPSPEED_CONFIGS = (
    "deepspeed_zero1",
    "deepspeed_zero2",
    "deepspeed_zero2_offload",
    "deepspeed_zero3",
    "deepspeed_zero3_offload",
)
#: How to install the DeepSpeed the book pins (PyPI ships only its source; see requirements/gpu-train.txt).
DEEPSPEED_INSTALL = (
    "DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.18.9 -w wheels && "
    "pip install wheels/deepspeed-0.18.9-py3-none-any.whl hjson msgpack ninja py-cpuinfo"
)


#: Why DeepSpeed is skipped on a CPU where it is missing, in one sentence (notebook 09 prints it).
DEEPSPEED_CPU_REASON = (
    "the deepspeed package is not installed in this environment (tools/install.sh builds it from source, "
    "see requirements/deepspeed.txt); where it is, XTuner's --deepspeed deepspeed_zero2 trains on a CPU too, "
    "in one process and bf16, through helpers.compat.deepspeed_on_cpu"
)


def deepspeed_installed() -> bool:
    """True when ``import deepspeed`` can find the package (it is not imported: that is slow)."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def deepspeed_problems(recipe: Recipe, deepspeed: str | None, *, installed: bool | None = None) -> list[Problem]:
    """Why ``--deepspeed deepspeed`` cannot train ``recipe`` here (an empty list when it can, or when None).

    Checked before any model loads: the name is one XTuner ships; the package is
    installed (``installed`` overrides the look-up, for tests); and ZeRO-3 is not
    combined with 4-bit weights (ZeRO-3 shards every parameter across processes;
    XTuner 0.2.0 keeps NF4 weights packed in ``uint8``, which it cannot shard, so
    QLoRA works with ZeRO-1/2 only; see book/guides/real-hardware.md).

    >>> [p.name for p in deepspeed_problems(Recipe("/m", "/d.json", "/d"), "deepspeed_zero3", installed=True)]
    ['deepspeed']
    >>> deepspeed_problems(Recipe("/m", "/d.json", "/d", quantization_llm=False), "deepspeed_zero3", installed=True)
    []
    """
    if deepspeed is None:
        return []
    if deepspeed not in DEEPSPEED_CONFIGS:
        return [Problem("deepspeed", deepspeed, f"XTuner ships {', '.join(DEEPSPEED_CONFIGS)}; use one of them")]
    out = []
    if not (deepspeed_installed() if installed is None else installed):
        out.append(
            Problem(
                "deepspeed",
                deepspeed,
                "the deepspeed package is not installed in this environment; install the pinned version with "
                f"`{DEEPSPEED_INSTALL}`, or set deepspeed=None to train without it",
            )
        )
    if deepspeed.startswith("deepspeed_zero3") and (recipe.quantization_llm or recipe.quantization_vit):
        out.append(
            Problem(
                "deepspeed",
                deepspeed,
                "ZeRO-3 shards every weight across the processes, and XTuner 0.2.0 stores 4-bit NF4 weights "
                "(quantization_llm/quantization_vit) packed as uint8 (its BitsAndBytesConfig sets no "
                "bnb_4bit_quant_storage), which ZeRO-3 cannot shard; use deepspeed_zero1 or deepspeed_zero2 for "
                "QLoRA, or quantization_llm=False (plain LoRA) with ZeRO-3",
            )
        )
    return out


def check_deepspeed(recipe: Recipe, deepspeed: str | None, *, installed: bool | None = None) -> None:
    """Raise :class:`BookError` with every :func:`deepspeed_problems` finding and its fix."""
    found = deepspeed_problems(recipe, deepspeed, installed=installed)
    if found:
        raise BookError("\n".join(str(p) for p in found))


def fit_to_hardware(
    recipe: Recipe, *, cuda: bool, bnb_4bit: bool, cpu_cores: int = 2, gpus: int = 1, deepspeed: str | None = None
) -> tuple[Recipe, list[Override]]:
    """Adapt a recipe to this machine; return the new recipe and every change with its reason.

    Raises :class:`ProfileError` when 4-bit quantisation is asked for where
    bitsandbytes cannot run it: that changes the experiment, so you decide;
    and :class:`BookError` when ``deepspeed`` cannot run (:func:`check_deepspeed`).

    >>> r, changes = fit_to_hardware(Recipe("/m", "/d.json", "/d"), cuda=False, bnb_4bit=True)
    >>> [c.field for c in changes]
    ['amp_dtype', 'dist_backend', 'dataloader_num_workers']
    >>> fit_to_hardware(Recipe("/m", "/d.json", "/d"), cuda=True, bnb_4bit=True)[1]
    []
    """
    if (recipe.quantization_llm or recipe.quantization_vit) and not bnb_4bit:
        raise ProfileError(
            "4-bit quantisation (quantization_llm/quantization_vit) was asked for, but bitsandbytes cannot run "
            "NF4 on this machine (see notebook 00's probe). Install bitsandbytes 0.50.2, or set "
            "quantization_llm=False to train LoRA on a bf16 base (plain LoRA, more memory)."
        )
    check_deepspeed(recipe, deepspeed)
    changes: list[Override] = []

    def change(name: str, value: Any, reason: str) -> None:
        before = getattr(recipe, name)
        if before != value:
            changes.append(Override(name, before, value, reason))

    if not cuda:
        if recipe.amp_dtype is not None:
            change(
                "amp_dtype",
                None,
                "mmengine's AmpOptimWrapper needs a CUDA device; on a CPU we train in "
                "full precision (the 4-bit weights stay 4-bit)",
            )
        change("dist_backend", "gloo", "NCCL needs GPUs; gloo is PyTorch's CPU communication backend")
        change(
            "torch_compile",
            "none",
            "compiling the layers on a CPU delays the first step by minutes (92 s on the tiny model, longer "
            "than the tiny profile's whole training); it is a GPU speed lever",
        )
        workers = min(recipe.dataloader_num_workers, max(cpu_cores - 1, 0))
        change("dataloader_num_workers", workers, f"{cpu_cores} CPU cores: leave one for the training process")
    new = dataclasses.replace(recipe, **{c.field: c.after for c in changes})
    return new, changes


def _optimizer_block(recipe: Recipe) -> tuple[str, str]:
    import_line, cls, extra = OPTIMIZERS[recipe.optimizer]
    kwargs = "".join(f", {k}={v!r}" for k, v in extra.items())
    return import_line, (f"dict(\n        type={cls}, lr=lr, betas=betas, weight_decay=weight_decay{kwargs})")


#: The XTuner config as a :class:`string.Template`: the file as it is written, with ``${name}`` holes.
TEMPLATE = Path(__file__).resolve().parent / "templates" / "xtuner_qlora.py.tmpl"

#: Recipe fields written with ``str()``; every other field the template names is written with ``repr()``.
_PLAIN_FIELDS = (
    "max_length",
    "batch_size",
    "accumulative_counts",
    "dataloader_num_workers",
    "save_steps",
    "save_total_limit",
    "lora_r",
    "lora_alpha",
    "log_interval",
)


def _wrapper_parts(recipe: Recipe) -> dict[str, str]:
    """fp16/bf16 mixed precision (``AmpOptimWrapper``) or full precision (``OptimWrapper``)."""
    if not recipe.amp_dtype:
        return {"wrapper": "OptimWrapper", "wrapper_extra": ""}
    return {
        "wrapper": "AmpOptimWrapper",
        "wrapper_extra": f"\n    loss_scale='dynamic',\n    dtype={recipe.amp_dtype!r},",
    }


def _schedule_parts(recipe: Recipe) -> dict[str, str]:
    """Training length, loop and learning-rate schedule: by iterations (``max_iters``) or by epochs."""
    if not recipe.max_iters:
        return {
            "length": f"max_epochs = {recipe.max_epochs!r}",
            "train_cfg": "dict(type=TrainLoop, max_epochs=max_epochs)",
            "schedule": """[
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]""",
        }
    warm = int(recipe.warmup_ratio * recipe.max_iters)
    # mmengine chains schedulers: a 1-step LinearLR would leave the lr at start_factor * lr for
    # the whole run, so warm-up needs at least 2 iterations or is left out.
    warmup = f"\n    dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end={warm})," if warm >= 2 else ""
    begin = warm if warm >= 2 else 0
    return {
        "length": f"max_iters = {recipe.max_iters}",
        "train_cfg": "dict(type=TrainLoop, max_iters=max_iters)",
        "schedule": f"""[{warmup}
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin={begin}, end=max_iters),
]""",
    }


#: LoRA on every linear layer of InternLM2 except the LM head ``output``: with ``lm_head='bf16'`` the
#: head stays frozen in bf16 without an adapter (XTuner's default, None, would wrap it too).
LORA_TARGETS_WITHOUT_HEAD = ("wqkv", "wo", "w1", "w2", "w3")

#: Recipe fields that the book's launcher reads from the config as ``book_<field>`` (XTuner ignores them).
LEVER_FIELDS = (
    "attention",
    "bnb_compute_dtype",
    "lm_head",
    "checkpoint",
    "checkpoint_every",
    "loss_logits",
    "epoch_pause",
)


def _levers_part(recipe: Recipe) -> str:
    """The ``book_*`` settings, written only when one differs from XTuner's own behaviour (the course's)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Recipe) if f.name in LEVER_FIELDS}
    if all(getattr(recipe, k) == v for k, v in defaults.items()):
        return ""
    lines = "".join(f"book_{k} = {getattr(recipe, k)!r}\n" for k in LEVER_FIELDS)
    return (
        "\n# Speed levers, read by the book's launcher (python -m helpers.xtuner_launch) and ignored by XTuner:\n"
        "# attention 'sdpa' = PyTorch's fused attention patched into the official model code, the 4-bit\n"
        "# layers' compute dtype (XTuner: float16), the LM head in 4-bit (XTuner) or bf16, the gradient\n"
        "# checkpointing variant and every Nth layer, logits for all or only the labelled tokens, the\n"
        "# seconds mmengine's loop pauses at each pass over the data (its own: 2) (helpers.compat).\n" + lines
    )


def _hook_parts(recipe: Recipe) -> dict[str, str]:
    """The book's own hooks in ``custom_hooks``: the step timer and the layer compiler, when asked for."""
    imports, hooks = "", ""
    if recipe.step_timing:
        imports += "\nfrom helpers.timing import StepTimerHook"
        hooks += (
            f"\n    dict(type=StepTimerHook, out={recipe.step_timing!r}, batch_size=batch_size,"
            "\n         accumulative_counts=accumulative_counts, warmup_steps=3),"
        )
    if recipe.torch_compile == "layers":
        imports += "\nfrom helpers.compile_layers import CompileLayersHook"
        hooks += "\n    dict(type=CompileLayersHook),  # torch.compile each transformer layer (GPU speed lever)"
    return {"hook_imports": imports, "hooks": hooks}


def render(recipe: Recipe) -> str:
    """The text of the XTuner config file for ``recipe`` (laid out like the course's).

    The file itself is :data:`TEMPLATE`; this fills its holes: the recipe's
    values, and the parts that depend on them (optimizer, precision wrapper,
    schedule by iterations or by epochs).

    >>> text = render(Recipe("/m", "/d/ex_cn.json", "/d"))
    >>> "quantization_llm=True" in text and "r=128" in text and "AmpOptimWrapper" in text
    True
    """
    import string

    validate(recipe)
    values = {
        f.name: (str if f.name in _PLAIN_FIELDS else repr)(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)
    }
    opt_import, opt_dict = _optimizer_block(recipe)
    values.update(
        opt_import=opt_import,
        opt_dict=opt_dict,
        optim_type=OPTIMIZERS[recipe.optimizer][1],
        betas=repr(tuple(recipe.betas)),
        targets=repr(list(recipe.lora_targets or LORA_TARGETS_WITHOUT_HEAD))
        if recipe.lora_targets is not None or recipe.lm_head == "bf16"
        else "None",
        persistent="\n    persistent_workers=True,"
        if recipe.persistent_workers and recipe.dataloader_num_workers
        else "",
        **_wrapper_parts(recipe),
        **_schedule_parts(recipe),
        book_levers=_levers_part(recipe),
        **_hook_parts(recipe),
    )
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)


class ConfigPath(type(Path())):  # type: ignore[misc]
    """The path :func:`write` returns, carrying the dataset check it ran (``dataset_report``).

    It is an ordinary :class:`pathlib.Path` otherwise; ``dataset_report`` is
    None on paths derived from it and when the check was skipped.
    """

    dataset_report: Any = None


def check_data(recipe: Recipe, *, cwd: str | Path | None = None) -> Any:
    """Validate the recipe's dataset as XTuner will read it; return the report (warnings only).

    Uses the model's tiling settings and the recipe's ``max_length``
    (:func:`helpers.data.check_training_data`). Raises
    :class:`~helpers.errors.DatasetError` with the validator's whole report
    when there is any error, before anything is written or loaded.
    """
    from .data import check_training_data

    return check_training_data(recipe.data_path, recipe.image_folder, recipe.model_path, recipe.max_length, cwd=cwd)


def write(recipe: Recipe, path: str | Path, *, check_dataset: bool = True) -> ConfigPath:
    """Validate ``recipe`` and its dataset, then write its XTuner config to ``path`` (plus ``recipe.json``).

    The dataset is checked first (:func:`check_data`): an error stops here
    with the validator's report (a :class:`~helpers.errors.DatasetError`) and
    writes nothing; warnings (samples longer than ``max_length``) are in the
    returned path's ``dataset_report``. ``check_dataset=False`` skips the
    check (for a config written on another machine); :func:`helpers.train.train`
    checks again before it starts XTuner.
    """
    report = check_data(recipe) if check_dataset else None
    text = render(recipe)
    path = ConfigPath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    (path.parent / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2), encoding="utf-8")
    path.dataset_report = report
    return path


def course_recipe(model_path: str, data_path: str, image_folder: str) -> Recipe:
    """The course's recipe exactly as seed 000 wrote it (random seed, no optimizer in checkpoints)."""
    return Recipe(model_path, data_path, image_folder, save_optimizer=False, seed=None)


def diff(recipe: Recipe, reference: Recipe) -> list[tuple[str, Any, Any]]:
    """Fields whose values differ: ``(field, reference value, recipe value)``."""
    a, b = dataclasses.asdict(reference), dataclasses.asdict(recipe)
    return [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def describe(recipe: Recipe) -> str:
    """A readable dump of every field (for notebooks)."""
    return pprint.pformat(dataclasses.asdict(recipe), sort_dicts=False, width=100)


# --------------------------------------------------------------------------- the course's own file, edited

#: The XTuner 0.2.0 config the course copies with ``xtuner copy-cfg`` and edits by hand (seed 000).
STOCK_CONFIG = "internvl_v2_internlm2_2b_qlora_finetune"


def course_edits(model_path: str | Path, data_root: str | Path) -> dict[str, str]:
    """The course's edits of :data:`STOCK_CONFIG`: ``{name: new Python source}`` of top-level assignments.

    The practice notes (seed 000) change nine lines of the copied file: the
    four paths, with the CLoT_cn_2000 layout (``data_root/ex_cn.json``, image
    paths relative to ``data_root``), and five hyper-parameters, whose values
    are :class:`Recipe`'s defaults (the one place they are written down).

    >>> edits = course_edits("/m", "/d")
    >>> edits["data_path"], edits["batch_size"], edits["lr"]
    ("data_root + 'ex_cn.json'", '4', '2e-05')
    """
    course = Recipe(str(model_path), "", "")
    return {
        "path": repr(str(model_path)),
        "data_root": repr(str(data_root).rstrip("/") + "/"),
        "data_path": "data_root + 'ex_cn.json'",
        "image_folder": "data_root",
        "max_length": str(course.max_length),
        "batch_size": str(course.batch_size),
        "accumulative_counts": str(course.accumulative_counts),
        "max_epochs": repr(course.max_epochs),
        "lr": repr(course.lr),
    }


def edit_config(
    text: str, assignments: dict[str, str] | None = None, replacements: list[tuple[str, str]] | None = None
) -> str:
    """Edit an XTuner config's text the way a person would: change whole assignments and exact lines.

    ``assignments`` maps a top-level name to the new source of its value
    (``lr = 1e-6  # comment`` keeps its comment); ``replacements`` are
    ``(old, new)`` pieces of text. Each target must occur exactly once, or
    :class:`BookError` says which did not, so an edit never lands in the
    wrong place or silently nowhere (another XTuner version's file).

    >>> print(edit_config("lr = 1e-6  # note\\nx = dict(a=1)\\n", {"lr": "2e-05"}, [("a=1", "a=2")]), end="")
    lr = 2e-05  # note
    x = dict(a=2)
    """
    import re

    for name, value in (assignments or {}).items():
        pattern = re.compile(rf"^({re.escape(name)} = )([^#\n]*?)(\s*#.*)?$", re.MULTILINE)
        found = len(pattern.findall(text))
        if found != 1:
            raise BookError(f"the config assigns {name!r} {found} times on one line, not once: edit it by hand.")
        text = pattern.sub(lambda m, value=value: m.group(1) + value + (m.group(3) or ""), text)
    for old, new in replacements or []:
        found = text.count(old)
        if found != 1:
            raise BookError(f"{old!r} occurs {found} times in the config, not once: edit it by hand.")
        text = text.replace(old, new)
    return text


def _readable(value: Any) -> Any:
    """A config value as a table shows it: classes and functions by name, the rest unchanged."""
    if isinstance(value, type) or callable(value):
        return getattr(value, "__qualname__", repr(value))
    return value


def config_fields(path: str | Path) -> dict[str, Any]:
    """Every value of an XTuner config file, flattened to dotted names (``model.llm_lora.r``).

    The file is loaded by mmengine exactly as ``xtuner train`` loads it;
    classes and functions are shown by name, lists of dicts by index
    (``param_scheduler[1].end``). Two configs compare field by field with
    this: names only one has are simply absent from the other.
    """
    from mmengine.config import Config

    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)
        else:
            out[prefix] = _readable(value)

    walk("", Config.fromfile(str(path)).to_dict())
    return out


def compare_configs(files: dict[str, str | Path]) -> list[tuple[list[str], tuple[Any, ...]]]:
    """The fields whose values differ between XTuner config files, grouped; ``"(absent)"`` where a file lacks one.

    ``files`` maps a label to a config file (read with :func:`config_fields`).
    Each group is ``(names, values)``: fields with the same values in every
    file are one group, because the config derives them from one setting
    (``path`` is also ``model.model_path``, ``tokenizer.pretrained_model_name_or_path`` ...);
    the first name is the setting. Values that are equal (``1`` and ``1.0``)
    do not differ.
    """
    fields = [config_fields(path) for path in files.values()]
    names = list(dict.fromkeys(name for f in fields for name in f))
    groups: dict[str, tuple[list[str], tuple[Any, ...]]] = {}
    for name in names:
        values = tuple(f.get(name, "(absent)") for f in fields)
        if all(v == values[0] for v in values):
            continue
        groups.setdefault(repr(values), ([], values))[0].append(name)
    return list(groups.values())
