"""The other route to a vision-language model: XTuner's LLaVA recipe, on parts the book builds itself.

The course's LLaVA notes (seed 003) give InternLM2-Chat-1.8B eyes with a CLIP
ViT-L/14-336 and a two-layer MLP projector, in two stages: **pretrain** the
projector alone on image-caption pairs, then **fine-tune** with QLoRA on the
LLM and LoRA on the ViT on multi-turn questions about images. This module
holds what notebook 11 needs for that, on XTuner 0.2.0's own tools:

* :func:`build_llm` and :func:`build_vision`: a tiny InternLM2-Chat (the
  book's InternLM2 remote code and tokenizer, :mod:`helpers.tiny`) and a
  tiny ``CLIPVisionModel`` with a 336 px ``CLIPImageProcessor``, saved as
  folders that ``LLaVAModel``, ``LLaVADataset`` and ``xtuner chat`` load
  unchanged; presets at the real sizes for a GPU check (:data:`LLM_PRESETS`,
  :data:`VISION_PRESETS`);
* the data: a caption set for the pretrain stage and a multi-turn Q&A set in
  LLaVA format with a held-out part (:func:`write_datasets`), and
  :func:`repeat` (the notes' ``repeat.py``);
* the notes' config edits (:func:`course_edits`) and the changes a CPU and
  the tiny profile need, each with its reason (:func:`machine_edits`);
* checks that run before XTuner does: a fine-tune config must name the
  pretrain's checkpoint (:func:`check_finetune_config`), and ``pth_to_hf``
  must get the config the checkpoint was trained with (:func:`check_pth_to_hf`);
* :func:`chat_command` and :func:`chat` (``xtuner chat`` driven through stdin),
  :func:`answer` (the same computation in this process, for many questions).

Chat tokens and the chat template come from :mod:`helpers.internvl`;
XTuner's ``internlm2_chat`` template writes the same ``<|im_start|>`` turns.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SAMPLE_DATA_DIR
from .convert import read_checkpoint
from .errors import BookError
from .internvl import IM_END, IM_START, IMAGE_TOKEN
from .tiny import INTERNLM2_FIELDS
from .train import run_watched, xtuner_command

#: XTuner 0.2.0's two stock configs of the notes (``xtuner list-cfg -p llava_internlm2_chat_1_8b``).
PRETRAIN_CONFIG = "llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain"
FINETUNE_CONFIG = "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune"
#: XTuner's prompt template for InternLM2-Chat (``--prompt-template``).
PROMPT_TEMPLATE = "internlm2_chat"
#: The question the pretrain captions answer (LLaVA's pretrain data asks for a short caption too).
CAPTION_QUESTION = "Write a short caption for this image."
#: The notes' two evaluation questions (``evaluation_inputs`` and the before/after chat).
COURSE_QUESTIONS = ("Please describe this picture", "What is the equipment in the image?")

#: InternLM2's config fields as InternVL2's language model has them (helpers.tiny, one place), with
#: eager attention: XTuner's LLaVA path asks for flash_attention_2 only where flash-attn imports.
_LLM_COMMON = {k: v for k, v in INTERNLM2_FIELDS.items() if k not in ("model_type", "torch_dtype", "use_cache")} | {
    "attn_implementation": "eager"
}

#: InternLM2-Chat sizes: the tiny one, and internlm2-chat-1_8b's (random weights, for the GPU check).
LLM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "max_position_embeddings": 4096,
    },
    "internlm2-chat-1.8b": {
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "max_position_embeddings": 32768,
        "vocab_size": 92544,
    },
}
#: CLIP vision towers: the tiny one (336 px, patch 42: 64 patches) and clip-vit-large-patch14-336's sizes.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "patch_size": 42,
        "projection_dim": 64,
    },
    "clip-vit-large-patch14-336": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "projection_dim": 768,
    },
}
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ----------------------------------------------------------------------------------------------
# data: captions (pretrain) and questions about the photos (fine-tune)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    """What the book says about one bundled photo: a caption and three short facts."""

    name: str  # file stem in helpers/sample_data/clot_sample/ex_images
    caption: str
    subject: str
    colour: str
    place: str

    @property
    def image(self) -> str:
        return f"ex_images/{self.name}.jpg"


# Written for this book by looking at the bundled photos (SOURCES.md says where each comes from).
_TRAIN_PHOTOS = (
    Photo(
        "astronaut", "An astronaut in an orange suit smiles in front of a flag.", "an astronaut", "orange", "indoors"
    ),
    Photo("astronaut_face", "A smiling woman with short curly hair.", "a woman's face", "orange", "indoors"),
    Photo(
        "astronaut_shuttle",
        "A model of a space shuttle on a dark background.",
        "a space shuttle model",
        "white",
        "indoors",
    ),
    Photo("astronaut_helmet", "A shiny black helmet next to an orange sleeve.", "a helmet", "black", "indoors"),
    Photo("chelsea", "A tabby cat looks straight at the camera.", "a cat", "brown", "indoors"),
    Photo("chelsea_eyes", "Close-up of a cat's green eyes.", "a cat's eyes", "green", "indoors"),
    Photo("coffee", "A cup of coffee on a red saucer.", "a cup of coffee", "red", "indoors"),
    Photo("coffee_crema", "Coffee with light crema inside a white cup.", "coffee", "brown", "indoors"),
    Photo("rocket", "A rocket stands on its launch pad at dusk.", "a rocket", "blue", "outdoors"),
    Photo("rocket_body", "The white body of a rocket against a blue sky.", "a rocket", "white", "outdoors"),
    Photo("rocket_tower", "A steel launch tower at dusk.", "a launch tower", "blue", "outdoors"),
    Photo("hubble_deep_field", "Many small galaxies on a black sky.", "galaxies", "black", "outdoors"),
    Photo("hubble_strip", "A thin strip of dark sky with tiny galaxies.", "galaxies", "black", "outdoors"),
    Photo("ihc", "Stained tissue under a microscope, brown on blue.", "tissue", "brown", "indoors"),
    Photo("ihc_gland", "One stained gland under a microscope.", "a gland", "brown", "indoors"),
    Photo("camera_tripod", "A camera tripod standing on grass, in black and white.", "a tripod", "grey", "outdoors"),
    Photo("coins", "Rows of old coins in black and white.", "coins", "grey", "indoors"),
    Photo("coins_big", "One old coin with a head on it.", "a coin", "grey", "indoors"),
    Photo("text", "Handwritten letters on a grey page.", "handwriting", "grey", "indoors"),
    Photo("grass", "Close-up of grass in black and white.", "grass", "grey", "outdoors"),
    Photo("gravel", "A patch of small grey stones.", "gravel", "grey", "outdoors"),
    Photo("brick", "A brick wall seen at an angle.", "a brick wall", "grey", "outdoors"),
    Photo("clock", "A blurred round object on a grey background.", "a blurred object", "grey", "indoors"),
    Photo("retina", "An orange photo of the back of an eye.", "a retina", "orange", "indoors"),
    Photo("retina_disc", "Red blood vessels on the back of an eye.", "blood vessels", "red", "indoors"),
    Photo("china", "A tall temple above a lake on a sunny day.", "a temple", "red", "outdoors"),
    Photo("china_pagoda", "A red and green pagoda with many roofs.", "a pagoda", "red", "outdoors"),
    Photo("china_lake", "A wide lake with a boat in the haze.", "a lake", "blue", "outdoors"),
    Photo("flower_bud", "Orange petals of a flower, seen from the side.", "a flower", "orange", "outdoors"),
    Photo("flower_center", "The centre of an orange dahlia.", "a dahlia", "orange", "outdoors"),
    Photo("grace_hopper", "A woman in a navy uniform and cap.", "a woman in uniform", "blue", "indoors"),
    Photo("grace_hopper_ribbons", "Medal ribbons on a dark uniform.", "medal ribbons", "blue", "indoors"),
)
# The held-out photos: none of them is a training photo (SOURCES.md, "Held-out property").
_HELDOUT_PHOTOS = (
    Photo("dogs_window", "Two dogs look out of a wooden window.", "two dogs", "brown", "outdoors"),
    Photo("fig_bowl", "Half a fig in a red bowl.", "a fig", "red", "indoors"),
    Photo("paint_brushes", "Paint brushes with colourful bristles.", "paint brushes", "blue", "indoors"),
    Photo("dandelions", "Dandelion seed heads in a field at sunset.", "dandelions", "green", "outdoors"),
    Photo("mountain_path", "A path through a green valley under rocky mountains.", "mountains", "green", "outdoors"),
    Photo("evening_boats", "Wooden boats on a shore at sunset.", "boats", "orange", "outdoors"),
)
#: The questions of the Q&A set, each with the answer pattern the book writes from a photo's facts.
QA_TURNS = (
    ("What is in the picture?", "The picture shows {subject}."),
    ("What colour stands out?", "The main colour is {colour}."),
    ("Was it taken indoors or outdoors?", "It looks like it was taken {place}."),
)


def photos(split: str = "train") -> tuple[Photo, ...]:
    """The bundled photos with the book's captions: ``"train"`` (32) or ``"heldout"`` (6)."""
    if split not in ("train", "heldout"):
        raise BookError(f"split must be 'train' or 'heldout', not {split!r}")
    return _TRAIN_PHOTOS if split == "train" else _HELDOUT_PHOTOS


def caption_records(items: Sequence[Photo]) -> list[dict[str, Any]]:
    """Pretrain records (LLaVA format): one human turn ``<image>`` + :data:`CAPTION_QUESTION`, the caption."""
    return [
        {
            "id": p.name,
            "image": p.image,
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{CAPTION_QUESTION}"},
                {"from": "gpt", "value": p.caption},
            ],
        }
        for p in items
    ]


def qa_records(items: Sequence[Photo]) -> list[dict[str, Any]]:
    """Multi-turn Q&A records (LLaVA format, ``<image>`` on the first human turn), one per photo."""
    records = []
    for p in items:
        turns: list[dict[str, str]] = []
        for i, (question, answer) in enumerate(QA_TURNS):
            turns.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if i == 0 else question})
            turns.append({"from": "gpt", "value": answer.format(subject=p.subject, colour=p.colour, place=p.place)})
        records.append({"id": p.name, "image": p.image, "conversations": turns})
    return records


def repeat(records: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The notes' ``repeat.py``: every record ``n`` times, in order, as a new list.

    >>> [r["id"] for r in repeat([{"id": "a"}, {"id": "b"}], 2)]
    ['a', 'b', 'a', 'b']
    """
    if not isinstance(n, int) or n < 1:
        raise BookError(f"repeat: n must be a positive integer, not {n!r}")
    return [dict(r) for _ in range(n) for r in records]


@dataclass(frozen=True)
class Datasets:
    """The files :func:`write_datasets` writes; image paths in them are relative to ``image_folder``."""

    captions: Path
    qa_unique: Path
    qa_train: Path  # qa_unique repeated
    qa_heldout: Path
    image_folder: Path


def _write(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def write_datasets(
    out_dir: str | Path, *, repeats: int = 1, caption_repeats: int = 1, image_folder: str | Path = SAMPLE_DATA_DIR
) -> Datasets:
    """Write the caption set, the Q&A set (unique, repeated, held out) into ``out_dir`` as LLaVA JSON files.

    ``repeats`` is the notes' ``-n`` of ``repeat.py`` for the Q&A training
    file; ``caption_repeats`` repeats the caption set the same way.
    ``image_folder`` holds ``ex_images/`` with the bundled photos (the
    sample's folder by default; validate the files to check another copy).
    """
    out = Path(out_dir)
    train = photos("train")
    return Datasets(
        captions=_write(repeat(caption_records(train), caption_repeats), out / "captions.json"),
        qa_unique=_write(qa_records(train), out / "unique_data.json"),
        qa_train=_write(repeat(qa_records(train), repeats), out / "repeated_data.json"),
        qa_heldout=_write(qa_records(photos("heldout")), out / "heldout_qa.json"),
        image_folder=Path(image_folder),
    )


def corpus() -> list[str]:
    """Text the tiny tokenizer learns from: the book's corpus plus every caption, question and answer here."""
    from .tiny import default_corpus

    texts = [*default_corpus(), CAPTION_QUESTION, *COURSE_QUESTIONS]
    for items in (_TRAIN_PHOTOS, _HELDOUT_PHOTOS):
        for rec in caption_records(items) + qa_records(items):
            texts += [t["value"].replace(IMAGE_TOKEN, "").strip() for t in rec["conversations"]]
    return texts * 2  # pieces need two occurrences (min_frequency=2)


# ----------------------------------------------------------------------------------------------
# the two models
# ----------------------------------------------------------------------------------------------
def _fresh(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BookError(f"{out} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_llm(
    out: str | Path, preset: str = "tiny", *, seed: int = 0, overwrite: bool = False, device: str = "cpu"
) -> Path:
    """Write an InternLM2-Chat folder (``AutoModelForCausalLM`` with ``trust_remote_code``) and return its path.

    The weights are random (seeded), the code is the book's InternLM2
    (``helpers/remote_code``), the tokenizer the tiny one of
    :mod:`helpers.tiny`, trained on this route's texts too (:func:`corpus`),
    with InternLM2's special tokens and chat template.
    """
    import torch

    from .remote_code.configuration_internlm2 import InternLM2Config
    from .remote_code.modeling_internlm2 import InternLM2ForCausalLM
    from .tiny import REMOTE_CODE_DIR, train_tokenizer

    if preset not in LLM_PRESETS:
        raise BookError(f"unknown LLM preset {preset!r}; choose one of {sorted(LLM_PRESETS)}")
    out = _fresh(Path(out), overwrite)
    tokenizer = train_tokenizer(corpus())
    sizes = {"vocab_size": len(tokenizer), **LLM_PRESETS[preset]}
    fields = {k: v for k, v in _LLM_COMMON.items() if k not in ("architectures", "auto_map")}
    config = InternLM2Config(**fields, **sizes)
    config.architectures = _LLM_COMMON["architectures"]
    config.auto_map = _LLM_COMMON["auto_map"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = InternLM2ForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": [2, im_end], "pad_token_id": 2}, indent=2) + "\n"
    )
    tokenizer.save_pretrained(out)
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        shutil.copy2(REMOTE_CODE_DIR / name, out / name)
    (out / "README.md").write_text(
        f"# InternLM2-Chat, preset {preset}\n\nBuilt by `helpers.llava.build_llm` (seed {seed}): "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, random weights. Same code, special tokens "
        f"({IM_START} ... {IM_END}) and chat template as internlm2-chat-1_8b; NOT that model.\n",
        encoding="utf-8",
    )
    return out


def build_vision(
    out: str | Path, preset: str = "tiny", *, seed: int = 0, overwrite: bool = False, device: str = "cpu"
) -> Path:
    """Write a ``CLIPVisionModel`` folder with a 336 px ``CLIPImageProcessor`` and return its path.

    ``transformers.CLIPVisionModel.from_pretrained`` and
    ``CLIPImageProcessor.from_pretrained`` load it, as XTuner's LLaVA config
    and ``xtuner chat --visual-encoder`` do. Random (seeded) weights.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    if preset not in VISION_PRESETS:
        raise BookError(f"unknown vision preset {preset!r}; choose one of {sorted(VISION_PRESETS)}")
    out = _fresh(Path(out), overwrite)
    config = CLIPVisionConfig(image_size=336, hidden_act="quick_gelu", **VISION_PRESETS[preset])
    torch.manual_seed(seed)
    with torch.device(device):
        model = CLIPVisionModel(config)
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    ).save_pretrained(out)
    return out


def ensure_models(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """The tiny LLM and vision folders under ``folder`` (``internlm2-chat-tiny``, ``clip-vit-tiny-336``), built once."""
    folder = Path(folder)
    llm, vit = folder / "internlm2-chat-tiny", folder / "clip-vit-tiny-336"
    if not (llm / "config.json").exists():
        build_llm(llm, seed=seed, overwrite=True)
    if not (vit / "preprocessor_config.json").exists():
        build_vision(vit, seed=seed, overwrite=True)
    return llm, vit


# ----------------------------------------------------------------------------------------------
# the configs: the notes' edits, and what this machine and the tiny profile change
# ----------------------------------------------------------------------------------------------
def course_edits(
    stage: str,
    *,
    llm: str | Path,
    visual_encoder: str | Path,
    data_path: str | Path,
    image_folder: str | Path,
    evaluation_image: str | Path,
    pretrained_pth: str | Path | None = None,
) -> dict[str, str]:
    """The notes' edits of a copied stock config: ``{top-level name: new Python source}``.

    ``stage`` is ``"pretrain"`` or ``"finetune"``. The notes change the model
    paths, ``pretrained_pth`` (fine-tune only), ``data_root``/``data_path``/
    ``image_folder``, ``batch_size = 1`` and ``evaluation_inputs``; the stock
    ``evaluation_images`` is a URL, which a machine without internet cannot
    open, so it becomes a local photo. Apply them with
    :func:`helpers.config.edit_config`.

    >>> course_edits("pretrain", llm="/l", visual_encoder="/v", data_path="/d/c.json",
    ...              image_folder="/i", evaluation_image="/i/a.jpg")["batch_size"]
    '1'
    """
    if stage not in ("pretrain", "finetune"):
        raise BookError(f"stage must be 'pretrain' or 'finetune', not {stage!r}")
    data_path = Path(data_path)
    edits = {
        "llm_name_or_path": repr(str(llm)),
        "visual_encoder_name_or_path": repr(str(visual_encoder)),
        "data_root": repr(str(data_path.parent) + "/"),
        "data_path": f"data_root + {data_path.name!r}",
        "image_folder": repr(str(image_folder)),
        "batch_size": "1",
        "evaluation_images": repr(str(evaluation_image)),
        "evaluation_inputs": repr(list(COURSE_QUESTIONS)),
    }
    if stage == "finetune":
        if pretrained_pth is None:
            raise BookError("the fine-tune stage starts from the pretrain's checkpoint: pass pretrained_pth=iter_N.pth")
        edits["pretrained_pth"] = repr(str(pretrained_pth))
    return edits


@dataclass(frozen=True)
class Edit:
    """One change of a config for this machine or profile, with its reason."""

    what: str
    reason: str
    assignments: dict[str, str]
    replacements: tuple[tuple[str, str], ...] = ()


#: Fine-tune learning rate for the tiny parts (:func:`ensure_models`): their 64 iterations move too little at
#: the stock 2e-4 (notebook 11, exercise 1). Real parts keep the stock value.
TINY_FINETUNE_LR = 2e-3
#: LoRA rank of the LLM for the tiny parts: the stock r=512 is wider than their hidden size (128).
TINY_LORA_R = 16


def run_values(lr: float | None, lora_r: int | None, *, tiny_parts: bool) -> tuple[float | None, int | None]:
    """The fine-tune's ``lr`` and ``lora_r`` for :func:`machine_edits`: the values given, else the tiny parts'
    (:data:`TINY_FINETUNE_LR`, :data:`TINY_LORA_R`) on the tiny parts and ``None`` (the stock config's) on real ones.

    >>> run_values(None, None, tiny_parts=True), run_values(None, None, tiny_parts=False)
    ((0.002, 16), (None, None))
    >>> run_values(1e-4, 8, tiny_parts=True)
    (0.0001, 8)
    """
    if not tiny_parts:
        return lr, lora_r
    return (TINY_FINETUNE_LR if lr is None else lr), (TINY_LORA_R if lora_r is None else lora_r)


def machine_edits(
    stage: str,
    *,
    cuda: bool,
    max_iters: int | None = None,
    lr: float | None = None,
    lora_r: int | None = None,
    seed: int | None = None,
) -> list[Edit]:
    """The changes of a notes-edited config that this machine (``cuda``) and a short run need, each with its reason.

    ``max_iters`` stops after that many iterations (and logs and saves at
    the end); ``lr`` and ``lora_r`` replace the stock values (the tiny
    profile's model is 16 times narrower than the real one); ``seed`` fixes
    mmengine's random seed (the stock ``randomness.seed`` is None: every run
    differs).
    """
    edits: list[Edit] = []
    if not cuda:
        edits += [
            Edit(
                "AmpOptimWrapper -> OptimWrapper",
                "mmengine's fp16 AmpOptimWrapper needs a CUDA device; on a CPU we train in full precision",
                {},
                (
                    (
                        "from mmengine.optim import AmpOptimWrapper,",
                        "from mmengine.optim import AmpOptimWrapper, OptimWrapper,",
                    ),
                    ("type=AmpOptimWrapper,", "type=OptimWrapper,"),
                    ('    loss_scale="dynamic",\n    dtype="float16",\n', ""),
                ),
            ),
            Edit(
                "LLM torch_dtype float16 -> float32, 4-bit compute float32",
                "CPUs have no fast float16 arithmetic; the LLM's linear layers stay 4-bit NF4",
                {},
                (
                    ("torch_dtype=torch.float16,", "torch_dtype=torch.float32,"),
                    ("bnb_4bit_compute_dtype=torch.float16,", "bnb_4bit_compute_dtype=torch.float32,"),
                ),
            ),
            Edit(
                "dist backend nccl -> gloo",
                "NCCL needs GPUs; gloo is PyTorch's CPU backend",
                {},
                (('dist_cfg=dict(backend="nccl")', 'dist_cfg=dict(backend="gloo")'),),
            ),
            Edit(
                "dataloader_num_workers 4 -> 0",
                "2 CPU cores: the training process needs them",
                {"dataloader_num_workers": "0"},
            ),
        ]
    if max_iters is not None:
        edits += [
            Edit(
                f"train for {max_iters} iterations",
                "a short run: train_cfg stops there, a checkpoint at the end, a log line each iteration, short sample "
                "answers; warm-up 10%: 3% of a few dozen iterations is under 2, and mmengine's LinearLR then never "
                "leaves its start factor (lr stays 1e-5 of its value)",
                {"save_steps": str(max_iters), "evaluation_freq": str(max_iters), "warmup_ratio": "0.1"},
                (
                    (
                        "train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)",
                        f"train_cfg = dict(type=TrainLoop, max_iters={max_iters})",
                    ),
                    ("log_metric_by_epoch=False, interval=10)", "log_metric_by_epoch=False, interval=1)"),
                    ("every_n_iters=evaluation_freq,", "every_n_iters=evaluation_freq,\n        max_new_tokens=8,"),
                ),
            )
        ]
    if seed is not None:
        edits.append(
            Edit(
                f"randomness seed None -> {seed}",
                "the same run twice gives the same numbers",
                {},
                (
                    (
                        "randomness = dict(seed=None, deterministic=False)",
                        f"randomness = dict(seed={seed}, deterministic=False)",
                    ),
                ),
            )
        )
    if lr is not None:
        edits.append(Edit(f"lr -> {lr:g}", "the tiny parts' few iterations need larger steps", {"lr": repr(lr)}))
    if lora_r is not None and stage == "finetune":
        edits.append(
            Edit(
                f"LLM LoRA r 512 -> {lora_r}, alpha 256 -> {lora_r}",
                "r=512 is wider than the tiny LLM itself (hidden size 128); alpha/r = 1 keeps a unit scale",
                {},
                (("r=512,\n        lora_alpha=256,", f"r={lora_r},\n        lora_alpha={lora_r},"),),
            )
        )
    return edits


def edit_stock(text: str, course: dict[str, str], machine: Sequence[Edit] = ()) -> tuple[str, str]:
    """Apply the notes' edits, then the machine's; return ``(course_text, run_text)``.

    Every target must occur exactly once (:func:`helpers.config.edit_config`).
    """
    from .config import edit_config

    course_text = edit_config(text, course)
    run_text = course_text
    for e in machine:
        run_text = edit_config(run_text, e.assignments, list(e.replacements))
    return course_text, run_text


# ----------------------------------------------------------------------------------------------
# checks that run before XTuner does
# ----------------------------------------------------------------------------------------------
def _load_config(path: str | Path) -> Any:
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise BookError(f"config {path} does not exist; copy one with `xtuner copy-cfg` and edit it")
    return Config.fromfile(str(path))


def _model_type(cfg: Any) -> str:
    t = cfg.model.get("type")
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def config_stage(config: str | Path) -> str:
    """``"pretrain"`` or ``"finetune"``: whether the LLaVA config trains LoRA adapters (the notes' fine-tune)."""
    cfg = _load_config(config)
    if _model_type(cfg) != "LLaVAModel":
        raise BookError(f"{config}: model.type is {_model_type(cfg)}, not LLaVAModel; this is not a LLaVA config")
    return "finetune" if cfg.model.get("llm_lora") or cfg.model.get("visual_encoder_lora") else "pretrain"


def check_finetune_config(config: str | Path) -> Path:
    """Stop with a clear error unless a fine-tune config names an existing pretrain checkpoint; return it.

    The fine-tune stage trains the projector further, so it must start from
    the one the pretrain stage trained: without ``pretrained_pth`` XTuner
    starts from a random projector without a word, and with a path to a
    missing file it stops deep inside model building. A pretrain run with
    ``--deepspeed`` saves ``iter_N.pth`` as a folder (DeepSpeed's layout),
    which XTuner's ``guess_load_checkpoint`` reads as well: both are accepted.
    """
    cfg = _load_config(config)
    pth = cfg.model.get("pretrained_pth")
    if not pth:
        raise BookError(
            f"{config}: pretrained_pth is not set, so the fine-tune would start from a random projector. "
            "Set pretrained_pth = '.../iter_N.pth', the last checkpoint of the pretrain stage "
            "(helpers.train.last_checkpoint(pretrain_work_dir))."
        )
    path = Path(pth)
    if not path.exists():
        raise BookError(
            f"{config}: pretrained_pth = {pth!r} does not exist. Run the pretrain stage first, or point "
            "pretrained_pth at its iter_N.pth (helpers.train.last_checkpoint(pretrain_work_dir))."
        )
    return path


def checkpoint_keys(pth: str | Path) -> list[str]:
    """The parameter names an XTuner ``iter_N.pth`` holds (only what was trained). Your own checkpoints only."""
    return list(read_checkpoint(pth))


def check_pth_to_hf(config: str | Path, pth: str | Path) -> str:
    """Refuse (BookError, with the reason) a ``pth_to_hf`` whose config does not match the checkpoint; return the stage.

    ``xtuner convert pth_to_hf`` builds the model the config describes and
    copies the checkpoint's tensors into it. A pretrain config with a
    fine-tune checkpoint stops on the first LoRA name; a fine-tune config
    with a pretrain checkpoint "works" and saves fresh, untrained adapters
    (B = 0) as if they were the fine-tune's. A config of another model size
    fails on the projector's shape. All three are caught here first.
    """
    stage = config_stage(config)
    pth = Path(pth)
    if not pth.exists():
        raise BookError(f"checkpoint {pth} does not exist; train first (its work_dir holds iter_N.pth)")
    state = read_checkpoint(pth)
    keys = list(state)
    trained_lora = any("lora_" in k for k in keys)
    if stage == "pretrain" and trained_lora:
        raise BookError(
            f"refusing pth_to_hf: {pth.name} holds LoRA adapters (a fine-tune checkpoint) but {Path(config).name} "
            "is a pretrain config (no llm_lora), which has nowhere to put them. Convert it with the fine-tune config."
        )
    if stage == "finetune" and not trained_lora:
        raise BookError(
            f"refusing pth_to_hf: {pth.name} holds no LoRA adapters (a pretrain checkpoint) but {Path(config).name} "
            "is a fine-tune config: the result would carry untrained adapters. Convert it with the pretrain config."
        )
    cfg = _load_config(config)
    llm_cfg = json.loads((Path(cfg.model.llm.pretrained_model_name_or_path) / "config.json").read_text())
    vit_cfg = json.loads((Path(cfg.model.visual_encoder.pretrained_model_name_or_path) / "config.json").read_text())
    first = state.get("projector.model.0.weight")
    expected = (llm_cfg["hidden_size"], vit_cfg["hidden_size"])
    if first is not None and tuple(first.shape) != expected:
        raise BookError(
            f"refusing pth_to_hf: the projector in {pth.name} maps {first.shape[1]} -> {first.shape[0]} features, "
            f"but the config's models need {expected[1]} -> {expected[0]}: a config of another model size."
        )
    return stage


# ----------------------------------------------------------------------------------------------
# XTuner's tools as processes: pth_to_hf and chat
# ----------------------------------------------------------------------------------------------
def pth_to_hf_command(config: str | Path, pth: str | Path, out: str | Path) -> list[str]:
    """``xtuner convert pth_to_hf CONFIG PTH OUT`` as the book runs it: XTuner's tool in its launcher.

    :mod:`helpers.xtuner_launch` runs ``xtuner.tools.model_converters.pth_to_hf``
    in this interpreter with the CPU fixes (XTuner's ``LLaVAModel`` cannot be
    built on a CPU without :func:`helpers.compat.llava_on_cpu`). ``--fp32``
    on every machine: without it the converter calls ``llm.half()``, which
    transformers 4.48 refuses for a 4-bit model (``.half() is not supported
    for quantized model``); only the adapters and the projector are saved, in
    float32.
    """
    return [sys.executable, "-m", "helpers.xtuner_launch", "pth_to_hf", str(config), str(pth), str(out), "--fp32"]


def pth_to_hf(config: str | Path, pth: str | Path, out: str | Path) -> Path:
    """Check (:func:`check_pth_to_hf`), then convert ``pth`` to the LLaVA folder ``out`` (projector, adapters)."""
    check_pth_to_hf(config, pth)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    proc = run_watched(pth_to_hf_command(config, pth, out))
    if proc.returncode != 0 or not (out / "projector").is_dir():
        raise BookError(f"pth_to_hf failed (exit status {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out


def chat_command(
    llm: str | Path,
    visual_encoder: str | Path,
    llava: str | Path,
    image: str | Path,
    *,
    max_new_tokens: int = 32,
    torch_dtype: str = "fp32",
) -> list[str]:
    """The notes' ``xtuner chat LLM --visual-encoder V --llava DIR --prompt-template internlm2_chat --image IMG``.

    Greedy decoding (``--temperature 0``), no streamer (whole answers), and
    ``--torch-dtype fp32`` by default (CPUs have no fast float16).
    """
    return xtuner_command(
        "chat", str(llm), "--visual-encoder", str(visual_encoder), "--llava", str(llava),
        "--prompt-template", PROMPT_TEMPLATE, "--image", str(image), "--torch-dtype", torch_dtype,
        "--temperature", "0", "--no-streamer", "--max-new-tokens", str(max_new_tokens),
    )  # fmt: skip


#: The start of the line ``xtuner chat`` prints when an answer reaches ``--max-new-tokens``: it then drops the
#: history (xtuner/tools/chat.py compares the generated length, which with an image is the answer alone).
HISTORY_NOTICE = "Remove the memory of history responses"
#: What ``xtuner chat`` prints before reading each question.
CHAT_PROMPT = "double enter to end input (EXIT: exit chat, RESET: reset history) >>> "


def chat(command: list[str], questions: Sequence[str]) -> list[tuple[str, str]]:
    """Drive ``xtuner chat`` through its stdin (each question, an empty line, then EXIT); return (question, answer)."""
    stdin = "".join(f"{q}\n\n" for q in questions) + "EXIT\n\n"
    proc = run_watched(command, stdin=stdin)
    if proc.returncode != 0:
        raise BookError(f"xtuner chat failed (exit status {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    parts = proc.stdout.split(CHAT_PROMPT)[1:]
    # an answer that reaches --max-new-tokens makes xtuner chat drop the history, with a notice saying so
    answers = [
        "\n".join(line for line in p.strip().splitlines() if not line.startswith(HISTORY_NOTICE)).strip()
        for p in parts[: len(questions)]
    ]
    if len(answers) != len(questions):
        raise BookError(f"xtuner chat answered {len(answers)} of {len(questions)} questions:\n{proc.stdout[-2000:]}")
    return list(zip(questions, answers))


# ----------------------------------------------------------------------------------------------
# many questions in one process, and what the answers are closer to
# ----------------------------------------------------------------------------------------------
class LlavaChat:
    """The model ``xtuner chat --llava DIR`` loads, in this process, answering greedily as it does.

    It follows ``xtuner/tools/chat.py`` step by step: the LLM (plus
    ``llm_adapter``), the CLIP tower (plus ``visual_encoder_adapter``), the
    ``projector``; the image padded to a square with the processor's mean
    colour, the features of layer -2 without the CLS token through the
    projector; the ``internlm2_chat`` template, ``<image>`` before the first
    question, the history kept across turns. Use it to ask many questions
    without starting ``xtuner chat`` once per image; :func:`chat` runs the
    real command.
    """

    def __init__(self, llm: str | Path, visual_encoder: str | Path, llava: str | Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

        llava = Path(llava)
        self.tokenizer = AutoTokenizer.from_pretrained(str(llm), trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(str(llm), trust_remote_code=True, torch_dtype=torch.float32)
        if (llava / "llm_adapter").is_dir():
            model = PeftModel.from_pretrained(model, str(llava / "llm_adapter"))
        vit = CLIPVisionModel.from_pretrained(str(visual_encoder), torch_dtype=torch.float32)
        if (llava / "visual_encoder_adapter").is_dir():
            vit = PeftModel.from_pretrained(vit, str(llava / "visual_encoder_adapter"))
        self.processor = CLIPImageProcessor.from_pretrained(str(visual_encoder))
        self.projector = AutoModel.from_pretrained(
            str(llava / "projector"), trust_remote_code=True, torch_dtype=torch.float32
        )
        self.llm, self.vit = model.eval(), vit.eval()
        self.projector.eval()

    def ask(self, image: str | Path, questions: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        """Answer ``questions`` about ``image`` as one conversation; greedy decoding."""
        import torch
        from PIL import Image
        from xtuner.dataset.utils import expand2square
        from xtuner.model.utils import prepare_inputs_labels_for_multimodal
        from xtuner.utils import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
        from xtuner.utils import PROMPT_TEMPLATE as TEMPLATES

        template = TEMPLATES[PROMPT_TEMPLATE]
        img = expand2square(Image.open(image).convert("RGB"), tuple(int(x * 255) for x in self.processor.image_mean))
        pixels = self.processor.preprocess(img, return_tensors="pt")["pixel_values"]
        answers: list[str] = []
        text = ""
        with torch.no_grad():
            features = self.vit(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
            pixel_values = self.projector(features)
            for i, q in enumerate(questions):
                turn = f"{DEFAULT_IMAGE_TOKEN}\n{q}" if i == 0 else q
                text += template["INSTRUCTION"].format(input=turn, round=i + 1, bot_name="BOT")
                chunks = text.split(DEFAULT_IMAGE_TOKEN)
                ids: list[int] = []
                for j, chunk in enumerate(chunks):
                    ids += self.tokenizer.encode(chunk, add_special_tokens=(j == 0))
                    if j < len(chunks) - 1:
                        ids.append(IMAGE_TOKEN_INDEX)
                mm = prepare_inputs_labels_for_multimodal(
                    llm=self.llm, input_ids=torch.tensor(ids).unsqueeze(0), pixel_values=pixel_values
                )
                stop = [self.tokenizer.convert_tokens_to_ids(IM_END), self.tokenizer.eos_token_id]
                out = self.llm.generate(
                    **mm, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                    pad_token_id=self.tokenizer.pad_token_id, bos_token_id=self.tokenizer.bos_token_id,
                )  # fmt: skip
                answer = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
                answers.append(answer)
                text += answer + template.get("SEP", "")
        return answers


def score_answers(rows: Sequence[dict[str, str]]) -> dict[str, float]:
    """How close the answers are to the reference answers and to the photos' captions (chrF, 0-100).

    ``rows`` have ``answer``, ``reference`` and ``caption``; returns the corpus
    chrF against each and the share of answers closer to the caption than to
    the reference (:func:`helpers.compare.chrf`, as notebook 07).
    """
    from .compare import chrf, corpus_chrf

    hyps = [r["answer"] for r in rows]
    closer = [chrf(r["answer"], r["caption"]) > chrf(r["answer"], r["reference"]) for r in rows]
    return {
        "chrF vs reference": corpus_chrf(hyps, [r["reference"] for r in rows]),
        "chrF vs caption": corpus_chrf(hyps, [r["caption"] for r in rows]),
        "closer to the caption": sum(closer) / len(rows) if rows else float("nan"),
        "answers": len(rows),
    }


def heldout_rows(
    chat_model: LlavaChat, max_new_tokens: int = 24, image_folder: str | Path = SAMPLE_DATA_DIR
) -> list[dict[str, str]]:
    """Ask every held-out photo its Q&A questions (one conversation each); rows for :func:`score_answers`."""
    rows = []
    for p, rec in zip(photos("heldout"), qa_records(photos("heldout"))):
        turns = rec["conversations"]
        questions = [t["value"].replace(f"{IMAGE_TOKEN}\n", "") for t in turns[::2]]
        answers = chat_model.ask(Path(image_folder) / p.image, questions, max_new_tokens=max_new_tokens)
        for q, a, ref in zip(questions, answers, turns[1::2]):
            rows.append({"photo": p.name, "question": q, "answer": a, "reference": ref["value"], "caption": p.caption})
    return rows
