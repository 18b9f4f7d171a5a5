"""The rules every notebook parameter must follow, checked before the runner executes anything.

Each notebook's ``parameters`` cell documents its parameters in comments; this
module holds the rule behind each of them (:data:`RULES`), so that a bad value
(``-p lora_r -5``, ``-p backend lmdeploy`` on a machine without a GPU, a
``data_path`` that does not exist) stops the run in a second with every
problem named, instead of after minutes of notebooks. The training parameters
are checked by :func:`helpers.config.problems`, the one place their rules live.

>>> [str(p) for p in check({"lora_r": -5, "seed": "one"})]   # doctest: +NORMALIZE_WHITESPACE
["seed='one': must be an integer. Fix: -p seed 0",
 'lora_r=-5: the LoRA rank must be a positive integer, e.g. 8, 64 or 128. Fix: -p lora_r 128']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .llava import TINY_FINETUNE_LR, TINY_LORA_R

__all__ = ["Rule", "Problem", "RULES", "TRAINING", "check", "rule_names"]


@dataclass(frozen=True)
class Rule:
    """What a parameter accepts: its types, an extra test, the rule in words and an example value."""

    types: tuple[type, ...]
    rule: str
    example: Any
    test: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Problem:
    """A value that breaks its rule: the parameter's or recipe field's name, the value, the rule, and the
    fix where it is not in the rule's words already (``helpers.config`` reports recipe fields without one)."""

    name: str
    value: Any
    rule: str
    fix: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}: {self.rule}." + (f" Fix: {self.fix}" if self.fix else "")


_NONE = type(None)


def _device_ok(value: str) -> bool:
    return value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


#: Rules of the parameters that are not training settings (those are :data:`TRAINING`).
RULES: dict[str, Rule] = {
    "profile": Rule((str,), "must be 'tiny' or 'gpu'", "tiny", lambda v: v in ("tiny", "gpu")),
    "model_path": Rule(
        (str,),
        "must be a folder path (an InternVL2 model; the tiny profile builds it)",
        "_build/outputs/models/tiny-internvl2",
    ),
    "data_path": Rule(
        (str,),
        "must be an existing dataset: a CLoT-style folder, a .json/.jsonl file or FoodieQA",
        "helpers/sample_data/clot_sample",
        lambda v: Path(v).exists(),
    ),
    "output_dir": Rule((str,), "must be a folder path", "_build/outputs"),
    "device": Rule((str,), "must be 'auto', 'cpu', 'cuda' or 'cuda:N'", "auto", _device_ok),
    "seed": Rule((int,), "must be an integer", 0),
    "gallery_size": Rule((int,), "must be a positive integer", 8, lambda v: v >= 1),
    "backend": Rule(
        (str,),
        "must be 'auto', 'lmdeploy' or 'transformers'",
        "auto",
        lambda v: v in ("auto", "lmdeploy", "transformers"),
    ),
    "lmdeploy_engine": Rule(
        (str,), "must be 'pytorch' or 'turbomind'", "pytorch", lambda v: v in ("pytorch", "turbomind")
    ),
    "session_len": Rule((int,), "must be a token count of at least 16", 8192, lambda v: v >= 16),
    "max_new_tokens": Rule((int,), "must be a positive integer", 64, lambda v: v >= 1),
    "temperature": Rule((int, float), "must be 0 (greedy) or more", 0.0, lambda v: v >= 0),
    "infer_batch_size": Rule((int,), "must be a positive integer", 8, lambda v: v >= 1),
    "max_records": Rule(
        (int, _NONE), "must be None (every record) or a positive integer", "None", lambda v: v is None or v >= 1
    ),
    "deepspeed": Rule(
        (str, _NONE),
        "must be None or one of XTuner's DeepSpeed configs, e.g. deepspeed_zero1",
        "None",
        lambda v: v is None or v.startswith("deepspeed_zero"),
    ),
    "foodie_path": Rule(
        (str,),
        "must be a FoodieQA folder (sivqa_tidy.json + images/), e.g. a download of the release",
        "helpers/sample_data/foodieqa_sample",
        lambda v: (Path(v) / "sivqa_tidy.json").is_file() or any(Path(v).glob("*/sivqa_tidy.json")),
    ),
    "foodie_steps": Rule(
        (int, _NONE),
        "must be None (the course's 10 epochs) or a positive number of iterations",
        "None",
        lambda v: v is None or v >= 1,
    ),
    "qlora_twin": Rule((bool,), "must be true or false", "true"),
    "nproc_per_node": Rule(
        (int, _NONE), "must be None (every visible GPU) or a positive integer", "None", lambda v: v is None or v >= 1
    ),
    "demo_interrupt": Rule((bool,), "must be true or false", "true"),
    "fresh": Rule((bool,), "must be true or false", "false"),
    "runs_dir": Rule(
        (str, _NONE), "must be None or an existing sweep folder", "None", lambda v: v is None or Path(v).is_dir()
    ),
    "smoothing": Rule((int,), "must be a positive integer", 4, lambda v: v >= 1),
    "checkpoint": Rule(
        (str, _NONE),
        "must be None (the last checkpoint) or an existing iter_N.pth",
        "None",
        lambda v: v is None or Path(v).exists(),
    ),
    "demo_port": Rule(
        (int,),
        "must be 0 (any free port) or a port number from 1024 to 65535",
        0,
        lambda v: v == 0 or 1024 <= v <= 65535,
    ),
    "llava_pretrain_iters": Rule(
        (int,), "must be a positive integer (iterations of the LLaVA pretrain stage)", 16, lambda v: v >= 1
    ),
    "llava_finetune_iters": Rule(
        (int,), "must be a positive integer (iterations of the LLaVA fine-tune stage)", 64, lambda v: v >= 1
    ),
    "llava_finetune_lr": Rule(
        (int, float, _NONE),
        f"must be a positive learning rate, or null (the stock 2e-4; {TINY_FINETUNE_LR:g} on the tiny parts)",
        TINY_FINETUNE_LR,
        lambda v: v is None or v > 0,
    ),
    "llava_lora_r": Rule(
        (int, _NONE),
        f"must be a positive LoRA rank, or null (the stock r=512; {TINY_LORA_R} on the tiny parts)",
        TINY_LORA_R,
        lambda v: v is None or v >= 1,
    ),
    "llava_images_dir": Rule(
        (str,),
        "must be a folder with the bundled photos in ex_images/ (the LLaVA route's own data)",
        "helpers/sample_data/clot_sample",
        lambda v: (Path(v) / "ex_images").is_dir(),
    ),
    "llava_repeats": Rule((int,), "must be a positive integer (repeat.py's -n)", 2, lambda v: v >= 1),
    "llava_llm_path": Rule(
        (str,),
        "must be an InternLM2-Chat folder path, or '' to build the tiny one",
        "",
    ),
    "llava_visual_encoder_path": Rule(
        (str,),
        "must be a CLIP vision folder path, or '' to build the tiny one",
        "",
    ),
    "swift_steps": Rule((int,), "must be a positive integer (swift sft optimizer steps)", 32, lambda v: v >= 1),
    "swift_max_tiles": Rule(
        (int,), "must be an integer from 1 to 12 (ms-swift's MAX_NUM tiles per image)", 12, lambda v: 1 <= v <= 12
    ),
    "course_steps": Rule((int,), "must be a positive integer (iterations of the course's config)", 4, lambda v: v >= 1),
}

#: Notebook 03's training parameters, by the :class:`helpers.config.Recipe` field each one sets.
TRAINING: dict[str, str] = {
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lr": "lr",
    "optimizer": "optimizer",
    "batch_size": "batch_size",
    "accumulative_counts": "accumulative_counts",
    "max_length": "max_length",
    "max_epochs": "max_epochs",
    "max_steps": "max_iters",
    "save_steps": "save_steps",
    "log_interval": "log_interval",
    "quantization_llm": "quantization_llm",
    # the GPU speed levers (book/reference/training-benchmarks.md; params/gpu-internvl2-2b-fast.yaml)
    "amp_dtype": "amp_dtype",
    "attention": "attention",
    "bnb_compute_dtype": "bnb_compute_dtype",
    "lm_head": "lm_head",
    "loss_logits": "loss_logits",
    "torch_compile": "torch_compile",
    "dataloader_num_workers": "dataloader_num_workers",
    "persistent_workers": "persistent_workers",
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", _NONE: "None"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _training_problems(params: Mapping[str, Any]) -> list[Problem]:
    """The training parameters, checked by :func:`helpers.config.problems` on the recipe they make."""
    from .config import Recipe, problems

    given = {field: params[name] for name, field in TRAINING.items() if name in params}
    if not given:
        return []
    recipe = Recipe("model", "data.json", "images", **given)
    defaults = Recipe("model", "data.json", "images")
    names = {field: name for name, field in TRAINING.items()}
    out = []
    for p in problems(recipe):
        name = names.get(p.name, p.name)
        if p.name not in given:
            continue  # a rule between fields, reported for the field that was given
        example = getattr(defaults, p.name)
        out.append(Problem(name, p.value, p.rule, f"-p {name} {'None' if example is None else example}"))
    return out


def check(params: Mapping[str, Any], *, cuda: bool | None = None) -> list[Problem]:
    """Every parameter that breaks its rule, all of them, in the order given; nothing is run.

    ``cuda`` says whether this machine has a CUDA GPU (``None``: ask torch);
    asking for ``device='cuda'`` or ``backend='lmdeploy'`` without one is a
    problem too. Unknown names are not checked here (the runner warns about
    names no notebook uses).
    """
    out: list[Problem] = []
    for name, value in params.items():
        rule = RULES.get(name)
        if rule is None:
            continue
        if not _type_ok(value, rule.types):
            out.append(Problem(name, value, f"must be {_type_name(rule.types)}", f"-p {name} {rule.example}"))
        elif rule.test is not None and not rule.test(value):
            out.append(Problem(name, value, rule.rule, f"-p {name} {rule.example}"))
    out += _training_problems(params)
    model = params.get("model_path")
    if params.get("profile") == "gpu" and isinstance(model, str) and not Path(model).exists():
        out.append(
            Problem(
                "model_path",
                model,
                "the gpu profile loads a real model and this folder does not exist",
                "-p model_path /path/to/InternVL2-2B (a download of OpenGVLab/InternVL2-2B)",
            )
        )
    wants_gpu = [n for n in ("device", "backend") if str(params.get(n, "")).startswith(("cuda", "lmdeploy"))]
    if wants_gpu:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            out += [
                Problem(
                    n,
                    params[n],
                    "needs a CUDA GPU and this machine has none",
                    f"-p {n} {'auto' if n == 'device' else 'transformers'}",
                )
                for n in wants_gpu
            ]
    return out


def rule_names() -> set[str]:
    """Every parameter name this module has a rule for."""
    return set(RULES) | set(TRAINING)
