"""Build a faithful InternVL2 checkpoint locally: tiny for CPUs, or full-size with random weights.

No machine that runs this book can download InternVL2-2B, so the book makes
its own model directory with the same architecture family (InternViT ->
pixel shuffle -> ``mlp1`` projector -> InternLM2), the official ``config.json``
keys, weight names, special tokens and ``internlm2-chat`` template, and the
remote code that ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
loads. Two presets:

* ``tiny``: a few MB, built in seconds, for CPUs and CI. Its weights are
  random, so its answers are noise until the book fine-tunes it.
* ``internvl2-2b``: InternVL2-2B's real sizes (2.2 B parameters) with random
  weights, for GPU benchmarks of memory and speed.

Command line::

    python -m helpers.tiny --preset tiny --out _build/models/tiny-internvl2
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import PACKAGE_DIR, SAMPLE_DATA_DIR, repo_path
from .errors import BookError, ModelDirError, UsageError
from .internvl import (
    ADDITIONAL_SPECIAL_TOKENS,
    COURSE_QUESTION,
    HF_CHAT_TEMPLATE,
    IM_END,
    IM_START,
    INTERNVL_SYSTEM,
    SPECIAL_TOKENS,
    XTUNER_SYSTEM,
)

REMOTE_CODE_DIR = PACKAGE_DIR / "remote_code"
# The official InternVL2 code (OpenGVLab/InternVL, MIT), vendored: see helpers/official_code/README.md
OFFICIAL_CODE_DIR = PACKAGE_DIR / "official_code"
REMOTE_CODE_CHOICES = {"book": REMOTE_CODE_DIR, "official": OFFICIAL_CODE_DIR}

_TOP_LEVEL = {
    "architectures": ["InternVLChatModel"],
    "auto_map": {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    },
    "downsample_ratio": 0.5,
    "dynamic_image_size": True,
    "force_image_size": 448,
    "max_dynamic_patch": 12,
    "min_dynamic_patch": 1,
    "model_type": "internvl_chat",
    "ps_version": "v2",
    "select_layer": -1,
    "template": "internlm2-chat",
    "torch_dtype": "bfloat16",
    "use_backbone_lora": 0,
    "use_llm_lora": 0,
    "use_thumbnail": True,
}
_LLM_COMMON = {
    "architectures": ["InternLM2ForCausalLM"],
    "attn_implementation": "flash_attention_2",
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
    "bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "internlm2",
    "pad_token_id": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 2.0, "type": "dynamic"},
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
#: InternLM2's config fields shared by every size (also the LLaVA route's LLM, helpers.llava).
INTERNLM2_FIELDS = _LLM_COMMON
_VIT_COMMON = {
    "architectures": ["InternVisionModel"],
    "attention_dropout": 0.0,
    "drop_path_rate": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "image_size": 448,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-06,
    "model_type": "intern_vit_6b",
    "norm_type": "layer_norm",
    "num_channels": 3,
    "qk_normalization": False,
    "qkv_bias": True,
    "torch_dtype": "bfloat16",
    "use_flash_attn": True,
}


@dataclass(frozen=True)
class Preset:
    """Sizes that differ between presets; everything else is InternVL2-2B's."""

    name: str
    vision: dict[str, Any]
    llm: dict[str, Any]
    vocab_size: int | None  # None: exactly the trained tokenizer's size
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        vision={
            "hidden_size": 64,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "patch_size": 28,
        },
        llm={
            "hidden_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "max_position_embeddings": 4096,
        },
        vocab_size=None,
        description="tiny InternVL2 for CPUs and CI: 2-layer InternViT (patch 28, 64 tokens per tile), "
        "2-layer InternLM2 (hidden 128, GQA 4/2)",
    ),
    "internvl2-2b": Preset(
        name="internvl2-2b",
        vision={
            "hidden_size": 1024,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "patch_size": 14,
        },
        llm={
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "max_position_embeddings": 32768,
        },
        vocab_size=92553,
        description="InternVL2-2B's real sizes (InternViT-300M + InternLM2-1.8B), random weights, "
        "for GPU benchmarks only",
    ),
}


def model_config(preset: str | Preset, vocab_size: int | None = None) -> dict[str, Any]:
    """The ``config.json`` dictionary of a preset, with the official keys.

    A preset at a real size fixes its vocabulary (InternVL2-2B's 92,553); the ``tiny`` preset takes
    the size of the tokenizer it is built with, so it needs ``vocab_size``.

    >>> cfg = model_config("tiny", vocab_size=3000)
    >>> cfg["template"], cfg["llm_config"]["architectures"], cfg["llm_config"]["vocab_size"]
    ('internlm2-chat', ['InternLM2ForCausalLM'], 3000)
    >>> model_config("internvl2-2b")["llm_config"]["vocab_size"]
    92553
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    vocab = p.vocab_size or vocab_size
    if not vocab:
        raise UsageError(f"the {p.name!r} preset takes its vocabulary size from its tokenizer: pass vocab_size")
    cfg = copy.deepcopy(_TOP_LEVEL)
    cfg["vision_config"] = {**copy.deepcopy(_VIT_COMMON), **p.vision}
    cfg["llm_config"] = {**copy.deepcopy(_LLM_COMMON), **p.llm, "vocab_size": vocab}
    return cfg


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------
def default_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the bundled captions, prompts and templates."""
    texts = [
        INTERNVL_SYSTEM,
        XTUNER_SYSTEM,
        COURSE_QUESTION,
        "请描述这张图片。Please describe this image. What is in the picture?",
        "这张图片展示了一个有趣的场景。This image shows an interesting scene.",
    ]
    # the role names of the chat template, so that they become single pieces as in InternLM2
    texts += ["system", "user", "assistant"] * 8
    for name in ("ex_cn.json", "train.json", "eval.json"):
        path = SAMPLE_DATA_DIR / name
        if path.exists():
            for rec in json.loads(path.read_text(encoding="utf-8")):
                texts.extend(turn["value"].replace("<image>", "") for turn in rec.get("conversations", []))
            break
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train a SentencePiece-style BPE (``▁`` for spaces, byte fallback) like InternLM2's.

    Spaces become ``▁`` and split words; Chinese runs are merged into
    pieces of up to four characters where the corpus repeats them. Ids 0-2 are ``<unk> <s> </s>``,
    3-258 the byte pieces ``<0x00>..<0xFF>``,
    then the learned pieces, then the 15 special tokens in the official order.
    BOS is added by the post-processor, as InternLM2's tokenizer does.
    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<s>", "</s>"]
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=base, show_progress=False, min_frequency=2, max_token_length=4
    )
    trainer_tok.train_from_iterator(list(texts), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(base)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=list(ADDITIONAL_SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = HF_CHAT_TEMPLATE
    return fast


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
def build(
    preset: str = "tiny",
    out: str | Path = "_build/models/tiny-internvl2",
    seed: int = 0,
    overwrite: bool = False,
    device: str = "cpu",
    remote_code: str = "book",
) -> Path:
    """Write a complete InternVL2 model directory and return its path.

    The directory holds ``config.json``, ``generation_config.json``,
    ``model.safetensors`` (bf16, seeded), the tokenizer files, the remote-code
    ``*.py`` files and a ``README.md`` saying what the model is. The same seed
    gives the same bytes. ``remote_code`` picks the ``*.py`` files that
    ``trust_remote_code`` loads: ``book`` (this book's own implementation) or
    ``official`` (the official InternVL2 code, which needs ``timm``; the weights
    are the same, only the code beside them differs).

    >>> path = build("tiny", "/tmp/tiny-doc", overwrite=True)   # doctest: +SKIP
    >>> sorted(p.name for p in path.glob("*.json"))[:2]         # doctest: +SKIP
    ['config.json', 'generation_config.json']
    """
    import torch

    if preset not in PRESETS:
        raise BookError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if remote_code not in REMOTE_CODE_CHOICES:
        raise BookError(f"unknown remote code {remote_code!r}; choose one of {sorted(REMOTE_CODE_CHOICES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BookError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(default_corpus())
    cfg_dict = model_config(preset, vocab_size=len(tokenizer))

    from .remote_code.configuration_internvl_chat import InternVLChatConfig
    from .remote_code.modeling_internvl_chat import InternVLChatModel

    config = InternVLChatConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")})
    config.architectures = ["InternVLChatModel"]
    config.auto_map = cfg_dict["auto_map"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = InternVLChatModel(config)
    model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # save_pretrained writes what the (possibly adjusted) in-memory config holds; write the
    # official values back so the directory is what a download of InternVL2 would look like.
    saved = json.loads((out / "config.json").read_text())
    saved["llm_config"]["attn_implementation"] = cfg_dict["llm_config"]["attn_implementation"]
    saved["vision_config"]["use_flash_attn"] = True
    (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    im_end, im_start = tokenizer.convert_tokens_to_ids([IM_END, IM_START])
    (out / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "eos_token_id": [im_end, im_start]}, indent=2) + "\n"
    )
    tokenizer.save_pretrained(out)
    for src in REMOTE_CODE_CHOICES[remote_code].glob("*.py"):
        if src.name != "__init__.py":
            shutil.copy2(src, out / src.name)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(
        f"# {PRESETS[preset].description}\n\n"
        f"Built by `python -m helpers.tiny --preset {preset} --seed {seed} --remote-code {remote_code}`: "
        f"{n_params:,} parameters, "
        "random (seeded) weights. It is NOT InternVL2-2B: it has the same architecture family, config keys, "
        "weight names, special tokens and chat template, so every tool that loads InternVL2 loads it, "
        "but its answers mean nothing until it is trained.\n",
        encoding="utf-8",
    )
    return out


def ensure_model(model_path: str | Path, profile: str = "tiny") -> Path:
    """Return the model directory, building the tiny model there first if the profile is ``tiny``.

    With any other profile a missing directory is an error that says how to
    get the real InternVL2-2B, never a silent stand-in.

    >>> ensure_model("/nonexistent/InternVL2-2B", profile="gpu")   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    helpers.errors.ModelDirError: /nonexistent/InternVL2-2B has no config.json ...
    """
    path = repo_path(model_path)
    if (path / "config.json").exists():
        return path
    if profile == "tiny":
        return build("tiny", path, overwrite=True)
    raise ModelDirError(
        f"{path} has no config.json. Put InternVL2-2B there (for example "
        f"`huggingface-cli download OpenGVLab/InternVL2-2B --local-dir {path}` on a machine with internet "
        "access) or set the model_path parameter to the folder that holds it."
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.tiny --out DIR [--preset P]``: build a model; exit status 2 on unusable input."""
    from .errors import report

    parser = argparse.ArgumentParser(prog="python -m helpers.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to initialise weights (cuda is faster for 2B)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument(
        "--remote-code",
        default="book",
        choices=sorted(REMOTE_CODE_CHOICES),
        help="the model code shipped in the directory: this book's own, or the official InternVL2 code",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = build(
            args.preset,
            args.out,
            seed=args.seed,
            overwrite=args.overwrite,
            device=args.device,
            remote_code=args.remote_code,
        )
    except BookError as exc:
        return report(exc)
    print(
        f"built {args.preset} InternVL2 ({args.remote_code} code) at {path} in {time.perf_counter() - t0:.1f} s, "
        f"{_dir_size(path) / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
