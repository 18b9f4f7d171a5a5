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
    # checkpoints and logs
    save_steps: int = 1000
    save_total_limit: int = 1
    save_optimizer: bool = True  # the course saved without it; we keep it so that resume is exact
    log_interval: int = 10
    seed: int | None = 0  # the course used None (random); a fixed seed makes runs repeatable
    dist_backend: str = "nccl"
    extra: dict[str, Any] = field(default_factory=dict)

    def changed(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (validated when written)."""
        return dataclasses.replace(self, **changes)


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


def validate(recipe: Recipe, min_sample_tokens: int | None = None) -> None:
    """Raise :class:`BookError` naming the field and the fix when a value cannot work.

    ``min_sample_tokens`` is the token count of the shortest possible sample
    (one image's tokens plus the prompt); a ``max_length`` below it would cut
    every image.

    >>> validate(Recipe("/m", "/d.json", "/d", lora_r=0))   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    helpers.errors.BookError: lora_r=0: ...
    """
    checks = [
        (recipe.lora_r > 0, "lora_r", "the LoRA rank must be a positive integer, e.g. 8, 64 or 128"),
        (recipe.lora_alpha > 0, "lora_alpha", "LoRA alpha must be positive; the course uses 2 x lora_r"),
        (0 <= recipe.lora_dropout < 1, "lora_dropout", "dropout is a probability in [0, 1)"),
        (recipe.lr > 0, "lr", "the learning rate must be positive (AdamW: ~1e-5..1e-4; DAdaptAdam: 1.0)"),
        (recipe.batch_size >= 1, "batch_size", "use at least 1 sample per device"),
        (recipe.accumulative_counts >= 1, "accumulative_counts", "use 1 for no gradient accumulation"),
        (recipe.max_epochs > 0 or (recipe.max_iters or 0) > 0, "max_epochs", "train for at least some steps"),
        (recipe.max_iters is None or recipe.max_iters >= 1, "max_iters", "use None or a positive integer"),
        (recipe.save_steps >= 1, "save_steps", "checkpoint every N >= 1 iterations"),
        (recipe.max_length > 0, "max_length", "max_length is a number of tokens, e.g. 6656"),
        (0 <= recipe.warmup_ratio < 1, "warmup_ratio", "warmup is a fraction of training in [0, 1)"),
        (recipe.amp_dtype in (None, "float16", "bfloat16"), "amp_dtype", "use 'float16', 'bfloat16' or None"),
        (recipe.dist_backend in ("nccl", "gloo"), "dist_backend", "use 'nccl' (GPUs) or 'gloo' (CPU)"),
        (not recipe.quantization_llm or recipe.freeze_llm, "quantization_llm",
         "a 4-bit LLM cannot be trained in full: keep freeze_llm=True and train LoRA adapters"),
    ]
    for ok, name, fix in checks:
        if not ok:
            raise BookError(f"{name}={getattr(recipe, name)!r}: {fix}.")
    if recipe.optimizer not in OPTIMIZERS:
        raise BookError(f"optimizer={recipe.optimizer!r} is unknown: use one of {sorted(OPTIMIZERS)}.")
    if min_sample_tokens is not None and recipe.max_length < min_sample_tokens:
        raise BookError(
            f"max_length={recipe.max_length} is shorter than one sample ({min_sample_tokens} tokens: the image "
            f"tokens plus the prompt), so every image would be cut off; raise max_length to at least "
            f"{min_sample_tokens} (the course uses 6656) or lower max_dynamic_patch in the model config."
        )


def fit_to_hardware(recipe: Recipe, *, cuda: bool, bnb_4bit: bool, cpu_cores: int = 2,
                    gpus: int = 1, deepspeed: str | None = None) -> tuple[Recipe, list[Override]]:
    """Adapt a recipe to this machine; return the new recipe and every change with its reason.

    Raises :class:`ProfileError` when 4-bit quantisation is asked for where
    bitsandbytes cannot run it: that changes the experiment, so you decide.

    >>> r, changes = fit_to_hardware(Recipe("/m", "/d.json", "/d"), cuda=False, bnb_4bit=True)
    >>> [c.field for c in changes]
    ['amp_dtype', 'dist_backend', 'dataloader_num_workers']
    >>> fit_to_hardware(Recipe("/m", "/d.json", "/d"), cuda=True, bnb_4bit=True, deepspeed="deepspeed_zero1")[1]
    []
    """
    if (recipe.quantization_llm or recipe.quantization_vit) and not bnb_4bit:
        raise ProfileError(
            "4-bit quantisation (quantization_llm/quantization_vit) was asked for, but bitsandbytes cannot run "
            "NF4 on this machine (see notebook 00's probe). Install bitsandbytes 0.50.2, or set "
            "quantization_llm=False to train LoRA on a bf16 base (plain LoRA, more memory)."
        )
    changes: list[Override] = []

    def change(name: str, value: Any, reason: str) -> None:
        before = getattr(recipe, name)
        if before != value:
            changes.append(Override(name, before, value, reason))

    if not cuda:
        if recipe.amp_dtype is not None:
            change("amp_dtype", None, "mmengine's AmpOptimWrapper needs a CUDA device; on a CPU we train in "
                                      "full precision (the 4-bit weights stay 4-bit)")
        change("dist_backend", "gloo", "NCCL needs GPUs; gloo is PyTorch's CPU communication backend")
        workers = min(recipe.dataloader_num_workers, max(cpu_cores - 1, 0))
        change("dataloader_num_workers", workers, f"{cpu_cores} CPU cores: leave one for the training process")
    new = dataclasses.replace(recipe, **{c.field: c.after for c in changes})
    return new, changes


def _optimizer_block(recipe: Recipe) -> tuple[str, str]:
    import_line, cls, extra = OPTIMIZERS[recipe.optimizer]
    kwargs = "".join(f", {k}={v!r}" for k, v in extra.items())
    return import_line, (f"dict(\n        type={cls}, lr=lr, betas=betas, weight_decay=weight_decay{kwargs})")


def render(recipe: Recipe) -> str:
    """The text of the XTuner config file for ``recipe`` (laid out like the course's).

    >>> text = render(Recipe("/m", "/d/ex_cn.json", "/d"))
    >>> "quantization_llm=True" in text and "r=128" in text and "AmpOptimWrapper" in text
    True
    """
    validate(recipe)
    opt_import, opt_dict = _optimizer_block(recipe)
    persistent = "\n    persistent_workers=True," if recipe.persistent_workers and recipe.dataloader_num_workers else ""
    if recipe.amp_dtype:
        wrapper = "AmpOptimWrapper"
        wrapper_extra = f"\n    loss_scale='dynamic',\n    dtype={recipe.amp_dtype!r},"
    else:
        wrapper = "OptimWrapper"
        wrapper_extra = ""
    if recipe.max_iters:
        length = f"max_iters = {recipe.max_iters}"
        train_cfg = "dict(type=TrainLoop, max_iters=max_iters)"
        warm = int(recipe.warmup_ratio * recipe.max_iters)
        # mmengine chains schedulers: a 1-step LinearLR would leave the lr at start_factor * lr for
        # the whole run, so warm-up needs at least 2 iterations or is left out.
        warmup = (f"\n    dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end={warm}),"
                  if warm >= 2 else "")
        begin = warm if warm >= 2 else 0
        schedule = f"""[{warmup}
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin={begin}, end=max_iters),
]"""
    else:
        length = f"max_epochs = {recipe.max_epochs!r}"
        train_cfg = "dict(type=TrainLoop, max_epochs=max_epochs)"
        schedule = """[
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]"""
    targets = "None" if recipe.lora_targets is None else repr(list(recipe.lora_targets))
    return f'''# XTuner config for InternVL2 QLoRA, generated by helpers.config from a Recipe.
# Laid out like the course's internvl_v2_internlm2_2b_qlora_finetune.py; run it with
#   xtuner train THIS_FILE --work-dir WORK_DIR [--deepspeed deepspeed_zero1]
# or from Python with helpers.train.train(THIS_FILE, WORK_DIR).
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import {wrapper}, CosineAnnealingLR, LinearLR
from peft import LoraConfig
{opt_import}
from transformers import AutoTokenizer

from xtuner.dataset import InternVL_V1_5_Dataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from xtuner.model import InternVL_V1_5
from xtuner.utils import PROMPT_TEMPLATE

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
path = {recipe.model_path!r}

# Data
data_path = {recipe.data_path!r}
image_folder = {recipe.image_folder!r}
prompt_template = PROMPT_TEMPLATE.internlm2_chat
max_length = {recipe.max_length}

# Scheduler & Optimizer
batch_size = {recipe.batch_size}  # per_device
accumulative_counts = {recipe.accumulative_counts}
dataloader_num_workers = {recipe.dataloader_num_workers}
{length}
optim_type = {OPTIMIZERS[recipe.optimizer][1]}
lr = {recipe.lr!r}
betas = {tuple(recipe.betas)!r}
weight_decay = {recipe.weight_decay!r}
max_norm = {recipe.max_norm!r}  # grad clip
warmup_ratio = {recipe.warmup_ratio!r}

# Save
save_steps = {recipe.save_steps}
save_total_limit = {recipe.save_total_limit}  # Maximum checkpoints to keep (-1 means unlimited)

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model = dict(
    type=InternVL_V1_5,
    model_path=path,
    freeze_llm={recipe.freeze_llm!r},
    freeze_visual_encoder={recipe.freeze_visual_encoder!r},
    quantization_llm={recipe.quantization_llm!r},
    quantization_vit={recipe.quantization_vit!r},
    llm_lora=dict(
        type=LoraConfig,
        r={recipe.lora_r},
        lora_alpha={recipe.lora_alpha},
        lora_dropout={recipe.lora_dropout!r},
        target_modules={targets},
        task_type='CAUSAL_LM'))

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
llava_dataset = dict(
    type=InternVL_V1_5_Dataset,
    model_path=path,
    data_paths=data_path,
    image_folders=image_folder,
    template=prompt_template,
    max_length=max_length)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,{persistent}
    dataset=llava_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property='modality_length',
        per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=default_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type={wrapper},
    optimizer={opt_dict},
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,{wrapper_extra}
)

param_scheduler = {schedule}

train_cfg = {train_cfg}

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=path,
    trust_remote_code=True)

custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval={recipe.log_interval}),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(
        type=CheckpointHook,
        save_optimizer={recipe.save_optimizer!r},
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend={recipe.dist_backend!r}),
)

visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed={recipe.seed!r}, deterministic=False)
log_processor = dict(by_epoch=False)
'''


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

    return check_training_data(recipe.data_path, recipe.image_folder, recipe.model_path, recipe.max_length,
                               cwd=cwd)


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
