"""Turn an XTuner checkpoint into a complete, official-format InternVL2 model directory.

XTuner saves only what trained: the LoRA matrices of the language model and
the projector ``mlp1`` (``iter_N.pth``; a folder with DeepSpeed). The course
converts it with XTuner's ``convert_to_official.py``. :func:`convert` does the
same job with checks at every step:

1. read the checkpoint with XTuner's own loader and check it belongs to this
   base model (every tensor must find a parameter of the same shape);
2. rebuild base + adapter in float32, load the trained tensors, and record the
   logits of a fixed probe input;
3. fold each adapter into its weight, ``W' = W + (alpha / r) * B A``
   (``merge_and_unload``), and check the logits did not move;
4. save the merged model in bf16 with the base's ``config.json``, remote code,
   tokenizer and generation config, so it loads exactly like InternVL2-2B;
5. load the saved directory again through ``AutoModel`` and check its logits
   and greedy answer against the unmerged model.

Optionally the adapter alone is written in PEFT format (plus the projector,
which is not part of a PEFT adapter).
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BookError
from .internvl import COURSE_PROMPT, IMG_CONTEXT, build_prompt


@dataclass
class ConvertResult:
    """What :func:`convert` wrote and what it checked."""

    out_dir: Path
    seconds: float
    checkpoint_mb: float
    output_mb: float
    merged_vs_adapter_max_abs_diff: float
    saved_vs_adapter_max_abs_diff: float
    max_abs_logit: float
    top1_agreement: float
    same_greedy_answer: bool
    tolerance: float
    saved_vs_rounded_max_abs_diff: float = 0.0
    adapter_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The trained tensors of any XTuner checkpoint (``.pth`` file or DeepSpeed folder), InternVL's or LLaVA's.

    Uses XTuner's own ``guess_load_checkpoint``; raises a BookError that says
    what the path is when it is not a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise BookError(
            f"checkpoint {path} does not exist; notebook 04 lists the checkpoints it wrote "
            "(helpers.train.list_checkpoints(work_dir))."
        )
    from .compat import trust_own_checkpoints
    from .train import check_checkpoint

    check_checkpoint(path)
    trust_own_checkpoints()
    from xtuner.model.utils import guess_load_checkpoint

    try:
        state = guess_load_checkpoint(str(path))
    except Exception as exc:
        if path.is_dir() and "DeepSpeed" in str(exc):
            from .config import DEEPSPEED_INSTALL

            raise BookError(
                f"{path} is a DeepSpeed checkpoint folder, and reading it needs the deepspeed package, which is "
                f"not installed here; install it with `{DEEPSPEED_INSTALL}`."
            ) from exc
        raise BookError(f"{path} could not be read as an XTuner checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(state, dict) or not state:
        raise BookError(f"{path} holds no tensors; it is not an XTuner training checkpoint.")
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The trained tensors of an XTuner InternVL QLoRA checkpoint (:func:`read_checkpoint`, then its keys checked)."""
    state = read_checkpoint(path)
    if not any("lora_" in k or ".mlp1." in k for k in state):
        raise BookError(
            f"{path} has no LoRA or projector weights (keys like 'model.language_model...lora_A' or "
            f"'model.mlp1.0.weight'); it is not a checkpoint of XTuner's InternVL QLoRA training."
        )
    return state


def _recipe_from_config(config: Path) -> dict[str, Any]:
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    lora = cfg.model.get("llm_lora") or {}
    return {
        "model_path": cfg.model.model_path,
        "r": lora.get("r"),
        "lora_alpha": lora.get("lora_alpha"),
        "lora_dropout": lora.get("lora_dropout", 0.0),
        "target_modules": lora.get("target_modules"),
    }


def _probe_inputs(model: Any, tokenizer: Any, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    size = model.config.force_image_size or model.config.vision_config.image_size
    pixel_values = torch.randn(2, 3, size, size, generator=g)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    query = build_prompt([(COURSE_PROMPT, None)], tiles=[2], num_image_token=model.num_image_token).text
    batch = tokenizer(query + "哈哈", return_tensors="pt")
    # the official forward() requires image_flags (1 = a real tile); XTuner's collator passes them too
    image_flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
    return {
        "pixel_values": pixel_values,
        "image_flags": image_flags,
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
    }


def _logits(model: Any, probe: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        return model(
            pixel_values=probe["pixel_values"].to(dtype),
            image_flags=probe["image_flags"],
            input_ids=probe["input_ids"],
            attention_mask=probe["attention_mask"],
        ).logits.float()


def _greedy(model: Any, tokenizer: Any, probe: dict[str, Any]) -> str:
    dtype = next(model.parameters()).dtype
    return model.chat(
        tokenizer, probe["pixel_values"].to(dtype), COURSE_PROMPT, dict(max_new_tokens=12, do_sample=False)
    )


def _check_paths(checkpoint: Path, out_dir: Path, config: Path, overwrite: bool) -> None:
    """Refuse before any work: no config, a non-empty ``out_dir`` (unless ``overwrite``), or a folder inside the run."""
    if not config.exists():
        raise BookError(f"XTuner config {config} not found; pass config= the file the run was trained with.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise BookError(
            f"{out_dir} exists and is not empty; choose a new folder or pass overwrite=True "
            "(its contents will be replaced)."
        )
    if out_dir.resolve() == checkpoint.resolve() or out_dir.resolve() in checkpoint.resolve().parents:
        raise BookError(f"write the converted model outside the training folder, not into {out_dir}.")


def _base_with_adapter(
    state: dict[str, Any], recipe: dict[str, Any], base_dir: Path, checkpoint: Path
) -> tuple[Any, list[str]]:
    """The base model in float32 with the run's LoRA adapters, the trained tensors loaded; and the target modules.

    Every tensor of the checkpoint must find a parameter of the same shape, or the checkpoint belongs to
    another model or LoRA rank (a :class:`BookError` says so).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    targets = recipe["target_modules"] or sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.language_model.named_modules() if isinstance(m, torch.nn.Linear)}
        - {"lm_head", "output_layer"}
    )
    if any("lora_" in k for k in state):
        model.language_model = get_peft_model(
            model.language_model,
            LoraConfig(
                r=recipe["r"],
                lora_alpha=recipe["lora_alpha"],
                lora_dropout=recipe["lora_dropout"],
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
    own = model.state_dict()
    mapped, wrong = {}, []
    for key, tensor in state.items():
        name = key[len("model.") :] if key.startswith("model.") else key
        if name not in own:
            wrong.append(f"{key} (no such parameter)")
        elif own[name].shape != tensor.shape:
            wrong.append(f"{key} {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            mapped[name] = tensor.to(own[name].dtype)
    if wrong:
        raise BookError(
            f"{checkpoint} does not fit the base model {base_dir}: {len(wrong)} tensors do not match, "
            f"e.g. {wrong[:3]}. It was trained from another model or with another LoRA rank; pass the "
            "config of that run."
        )
    model.load_state_dict(mapped, strict=False)
    model.eval()  # LoRA dropout off: the modules PEFT just added start in training mode
    return model, targets


def _save_adapter(model: Any, adapter_dir: Path) -> list[str]:
    """Write the LoRA adapter in PEFT format, plus the trained projector beside it; return notes for the result."""
    from safetensors.torch import save_file

    model.language_model.save_pretrained(adapter_dir)
    save_file({k: v.contiguous() for k, v in model.mlp1.state_dict().items()}, adapter_dir / "mlp1.safetensors")
    return ["the PEFT adapter does not include the trained projector; it is in mlp1.safetensors"]


def _rebuilt_buffers(model: Any) -> list[tuple[Any, str, Any]]:
    """(module, name, copy) of each non-persistent buffer: not saved by ``save_pretrained``, rebuilt on loading.

    The official InternLM2 code caches its rotary ``inv_freq``, ``cos_cached`` and
    ``sin_cached`` this way. Rounding the model to bf16 rounds them too, but the
    saved folder, loaded again, computes them afresh in float32; so the model the
    saved folder is compared with must get its float32 copies back (without them
    the comparison differed by 0.2% of the largest logit at InternVL2-2B's sizes
    on an H200, with every weight saved right).
    """
    return [
        (module, name, module._buffers[name].detach().clone())
        for module in model.modules()
        for name in module._non_persistent_buffers_set
        if module._buffers.get(name) is not None
    ]


def copy_remote_code(base_dir: str | Path, out_dir: str | Path, *, overwrite: bool = True) -> list[str]:
    """Copy the base model's remote code (its ``*.py`` files) into ``out_dir``; return the names copied.

    ``save_pretrained`` writes weights and configuration only, and ``trust_remote_code=True`` loading
    looks for the model's Python files in the folder itself. ``overwrite=False`` keeps files already there.
    """
    copied = []
    for py in sorted(Path(base_dir).glob("*.py")):
        if overwrite or not (Path(out_dir) / py.name).exists():
            shutil.copy2(py, Path(out_dir) / py.name)
            copied.append(py.name)
    return copied


def _save_merged(model: Any, tokenizer: Any, out_dir: Path, base_dir: Path, provenance: dict[str, Any]) -> None:
    """Save the merged model in bf16 with the base's config, remote code, tokenizer and generation config."""
    import torch

    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    shutil.copy2(base_dir / "config.json", out_dir / "config.json")  # the architecture is unchanged
    copy_remote_code(base_dir, out_dir)
    if (base_dir / "generation_config.json").exists():
        shutil.copy2(base_dir / "generation_config.json", out_dir / "generation_config.json")
    tokenizer.save_pretrained(out_dir)
    (out_dir / "conversion.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False), encoding="utf-8")


def convert(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    overwrite: bool = False,
    adapter_dir: str | Path | None = None,
    tolerance: float = 0.1,
) -> ConvertResult:
    """Merge an XTuner QLoRA checkpoint into its base model and save an official InternVL2 directory.

    ``config`` is the XTuner config the run used (default: ``config.py`` next
    to the checkpoint, where XTuner leaves a copy). Refuses to write into a
    non-empty ``out_dir`` unless ``overwrite``. Two checks, both stated:
    merging in float32 may move no logit by more than 1e-3; the saved folder,
    loaded again, must give the logits of the merged model with its weights
    rounded to bf16 (what was meant to be saved) within 1e-3 of the largest
    logit. What bf16 itself costs is measured and reported, not a pass/fail
    test: the saved model against the float32 base + adapter (largest logit
    difference, share of probe positions with the same top token, same greedy
    answer); above ``tolerance`` times the largest logit a note says so.
    (bf16 keeps 8 bits of mantissa: storing the merged weights in it moved the
    logits of the tiny model by about 1% of the largest logit, and those of
    InternVL2-2B's 24 layers with random weights by 5.8% (H100, 5 tiles) and
    10.2% (H200 rehearsal, after 24 QLoRA iterations), the greedy answer the same.)
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    t0 = time.perf_counter()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    config = Path(config) if config else checkpoint.parent / "config.py"
    _check_paths(checkpoint, out_dir, config, overwrite)
    # 1. the checkpoint, and the base model its config names
    state = load_checkpoint(checkpoint)
    recipe = _recipe_from_config(config)
    base_dir = Path(recipe["model_path"])
    if not (base_dir / "config.json").exists():
        raise BookError(f"the base model {base_dir} named in {config} is missing; the merge needs it.")

    # 2. base + adapter in float32, and its logits and answer for a fixed probe
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=True)
    model, targets = _base_with_adapter(state, recipe, base_dir, checkpoint)
    probe = _probe_inputs(model, tokenizer)
    reference = _logits(model, probe)
    answer_ref = _greedy(model, tokenizer, probe)
    notes = []
    if adapter_dir is not None and hasattr(model.language_model, "peft_config"):
        notes += _save_adapter(model, Path(adapter_dir))

    # 3. fold the adapters in: W' = W + (alpha / r) B A
    if hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()
    merged = _logits(model, probe)
    merged_diff = float((merged - reference).abs().max())
    if merged_diff > 1e-3:
        raise BookError(f"merging changed the logits by {merged_diff:.2e} (> 1e-3 in float32); the merge is wrong.")

    # 4. save it like the base model
    rebuilt = _rebuilt_buffers(model)
    _save_merged(
        model,
        tokenizer,
        out_dir,
        base_dir,
        {
            "checkpoint": str(checkpoint),
            "config": str(config),
            "base_model": str(base_dir),
            "lora": {k: recipe[k] for k in ("r", "lora_alpha", "lora_dropout")},
            "target_modules": targets,
        },
    )

    # what was meant to be saved: the merged model, its weights rounded to bf16 by _save_merged
    model.float()
    for module, name, buffer in rebuilt:  # rebuilt on loading, so not rounded in the saved folder either
        module._buffers[name] = buffer
    rounded = _logits(model, probe)
    img_context_token_id = model.img_context_token_id
    del model, rebuilt  # one float32 copy in memory at a time: 8.8 GB for InternVL2-2B, not two
    gc.collect()

    # 5. load what was saved and compare it with base + adapter, and with the rounded merged model
    saved = AutoModel.from_pretrained(out_dir, trust_remote_code=True, torch_dtype=torch.float32).eval()
    saved.img_context_token_id = img_context_token_id
    saved_logits = _logits(saved, probe)
    saved_diff = float((saved_logits - reference).abs().max())
    scale = float(reference.abs().max())
    top1 = float((saved_logits.argmax(-1) == reference.argmax(-1)).float().mean())
    same_answer = _greedy(saved, tokenizer, probe) == answer_ref
    rounded_diff = float((saved_logits - rounded).abs().max())
    if rounded_diff > 1e-3 * scale:
        raise BookError(
            f"the saved folder does not hold the merged model: its logits differ from the merged model's "
            f"(weights rounded to bf16) by {rounded_diff:.2e}, more than 1e-3 x the largest logit {scale:.2f}; "
            "the conversion is not faithful (a tensor was saved under a wrong name or not at all)."
        )
    if saved_diff > tolerance * scale or not same_answer:
        notes.append(
            f"bf16 storage moved the logits by {saved_diff:.3f} ({saved_diff / scale:.1%} of the largest, "
            f"{top1:.1%} of positions with the same top token, same greedy answer: {same_answer}): "
            "bf16's 8-bit mantissa; a float32 copy of the merged model would keep them."
        )
    return ConvertResult(
        out_dir,
        time.perf_counter() - t0,
        _size_mb(checkpoint),
        _size_mb(out_dir),
        merged_diff,
        saved_diff,
        scale,
        top1,
        same_answer,
        tolerance,
        rounded_diff,
        Path(adapter_dir) if adapter_dir else None,
        notes,
    )


def _weights(model_dir: Path) -> dict[str, Any]:
    """Every tensor of a saved model folder (one or several ``*.safetensors`` files), by name."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise BookError(f"{model_dir} holds no *.safetensors weights; it is not a saved model folder.")
    out: dict[str, Any] = {}
    for file in files:
        out.update(load_file(file))
    return out


def tensor_shapes(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in a folder's ``*.safetensors`` files, read from their headers only.

    Cheap on any model size (no weights are loaded); ``{}`` for a folder without such files.
    Compare two folders with it, or count what a LoRA run saved (``math.prod`` of the shapes).
    """
    from safetensors import safe_open

    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), it is not a mapping)
                piece = f.get_slice(key)
                found[key] = (tuple(piece.get_shape()), piece.get_dtype())
    return found


def bf16_ulp(x: Any) -> Any:
    """The spacing of bfloat16 numbers at ``|x|`` (one unit in the last place; 8 significant bits).

    >>> import torch
    >>> bf16_ulp(torch.tensor([1.0, 3.0, 0.01])).tolist()
    [0.0078125, 0.015625, 6.103515625e-05]
    """
    import torch

    x = x.float().abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    return torch.exp2(torch.floor(torch.log2(x)) - 7)


def compare_models(a_dir: str | Path, b_dir: str | Path, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare the weights of two saved model folders tensor by tensor (e.g. two conversions of one checkpoint).

    Returns the names only one folder has, shape or dtype mismatches, the
    largest absolute difference and where it is, the largest difference of a
    tensor measured in bf16 units in the last place at that tensor's largest
    value (``max_diff_ulps``: 1.0 means one bf16 step of its biggest weight),
    which tensors and how many elements differ at all, and, with
    ``base_dir``, how many tensors each folder changed from the base model
    (so two conversions that both changed nothing are visible as such).
    """
    import torch

    a, b = _weights(Path(a_dir)), _weights(Path(b_dir))
    common = sorted(set(a) & set(b))
    result: dict[str, Any] = {
        "tensors": len(common),
        "only_in_a": sorted(set(a) - set(b)),
        "only_in_b": sorted(set(b) - set(a)),
        "mismatched": [],
        "dtypes": sorted({str(t.dtype) for t in (*a.values(), *b.values())}),
        "max_abs_diff": 0.0,
        "max_abs_diff_tensor": None,
        "max_diff_ulps": 0.0,
        "tensors_differing": [],
        "elements": 0,
        "elements_differing": 0,
    }
    for name in common:
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            result["mismatched"].append(f"{name}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
            continue
        diff = (x.float() - y.float()).abs()
        result["elements"] += diff.numel()
        differing = int((diff > 0).sum())
        if not differing:
            continue
        result["tensors_differing"].append(name)
        result["elements_differing"] += differing
        biggest = torch.maximum(x.float().abs().max(), y.float().abs().max())
        result["max_diff_ulps"] = max(result["max_diff_ulps"], float(diff.max() / bf16_ulp(biggest)))
        if float(diff.max()) > result["max_abs_diff"]:
            result["max_abs_diff"], result["max_abs_diff_tensor"] = float(diff.max()), name
    if base_dir is not None:
        base = _weights(Path(base_dir))
        result["changed_from_base"] = {
            label: sum(
                1
                for name, t in weights.items()
                if name in base and (t.shape != base[name].shape or not torch.equal(t.float(), base[name].float()))
            )
            for label, weights in (("a", a), ("b", b))
        }
    return result
