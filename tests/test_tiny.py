"""The tiny InternVL2 is faithful to the official checkpoint where tools look, and it works.

The OFFICIAL_* values below were checked by hand against public copies of
OpenGVLab/InternVL2-2B's config.json, tokenizer_config.json and
generation_config.json, the InternVL repository's conversation.py
("internlm2-chat" template) and modeling files, XTuner 0.2.0's
InternVL_V1_5 / InternVL_V1_5_Dataset and LMDeploy's InternVL loader.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers import internvl, tiny
from helpers.errors import UsageError

OFFICIAL_TOP_LEVEL = {
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
    "use_backbone_lora": 0,
    "use_llm_lora": 0,
    "use_thumbnail": True,
}
# InternVL2-2B's real sizes (checked against its config.json)
OFFICIAL_2B_LLM = {
    "architectures": ["InternLM2ForCausalLM"],
    "model_type": "internlm2",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "vocab_size": 92553,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000,
    "rope_scaling": {"factor": 2.0, "type": "dynamic"},
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "attn_implementation": "flash_attention_2",
}
OFFICIAL_2B_VISION = {
    "architectures": ["InternVisionModel"],
    "model_type": "intern_vit_6b",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 448,
    "qkv_bias": True,
    "qk_normalization": False,
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-06,
    "hidden_act": "gelu",
    "use_flash_attn": True,
}
OFFICIAL_2B_PARAMS = 2_205_754_368  # InternViT-300M + mlp1 + InternLM2-1.8B
OFFICIAL_SPECIAL_TOKENS_IN_ID_ORDER = [
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
OFFICIAL_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
# weight-name patterns: every official tensor family must be present (layer index -> N)
OFFICIAL_WEIGHT_NAMES = {
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.patch_embedding.bias",
    "vision_model.encoder.layers.N.ls1",
    "vision_model.encoder.layers.N.ls2",
    "vision_model.encoder.layers.N.attn.qkv.weight",
    "vision_model.encoder.layers.N.attn.qkv.bias",
    "vision_model.encoder.layers.N.attn.proj.weight",
    "vision_model.encoder.layers.N.attn.proj.bias",
    "vision_model.encoder.layers.N.mlp.fc1.weight",
    "vision_model.encoder.layers.N.mlp.fc1.bias",
    "vision_model.encoder.layers.N.mlp.fc2.weight",
    "vision_model.encoder.layers.N.mlp.fc2.bias",
    "vision_model.encoder.layers.N.norm1.weight",
    "vision_model.encoder.layers.N.norm1.bias",
    "vision_model.encoder.layers.N.norm2.weight",
    "vision_model.encoder.layers.N.norm2.bias",
    "mlp1.0.weight",
    "mlp1.0.bias",
    "mlp1.1.weight",
    "mlp1.1.bias",
    "mlp1.3.weight",
    "mlp1.3.bias",
    "language_model.model.tok_embeddings.weight",
    "language_model.model.layers.N.attention.wqkv.weight",
    "language_model.model.layers.N.attention.wo.weight",
    "language_model.model.layers.N.feed_forward.w1.weight",
    "language_model.model.layers.N.feed_forward.w2.weight",
    "language_model.model.layers.N.feed_forward.w3.weight",
    "language_model.model.layers.N.attention_norm.weight",
    "language_model.model.layers.N.ffn_norm.weight",
    "language_model.model.norm.weight",
    "language_model.output.weight",
}


def _pattern(name: str) -> str:
    import re

    return re.sub(r"\.layers\.\d+\.", ".layers.N.", name)


def test_config_has_official_keys_and_values(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    for key, value in OFFICIAL_TOP_LEVEL.items():
        assert cfg[key] == value, key
    assert cfg["llm_config"]["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    for key in OFFICIAL_2B_LLM:
        assert key in cfg["llm_config"], key
    for key in OFFICIAL_2B_VISION:
        assert key in cfg["vision_config"], key


def test_internvl2_2b_preset_has_the_real_sizes():
    cfg = tiny.model_config("internvl2-2b")
    assert {k: cfg["llm_config"][k] for k in OFFICIAL_2B_LLM} == OFFICIAL_2B_LLM
    with pytest.raises(UsageError, match="tiny.*pass vocab_size"):  # its vocabulary is its tokenizer's
        tiny.model_config("tiny")
    assert {k: cfg["vision_config"][k] for k in OFFICIAL_2B_VISION} == OFFICIAL_2B_VISION
    from helpers.remote_code.configuration_internvl_chat import InternVLChatConfig
    from helpers.remote_code.modeling_internvl_chat import InternVLChatModel

    config = InternVLChatConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = InternVLChatModel(config)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_2B_PARAMS
    assert model.num_image_token == 256


def test_weight_names_match_official(tiny_model_dir):
    from safetensors import safe_open

    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        names = {_pattern(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict: keys() is its API
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert names == OFFICIAL_WEIGHT_NAMES
    assert dtypes == {torch.bfloat16}


def test_wqkv_layout_is_group_interleaved(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())["llm_config"]
    from safetensors import safe_open

    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        wqkv = f.get_tensor("language_model.model.layers.0.attention.wqkv.weight")
    groups = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    assert wqkv.shape == ((cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * head_dim, cfg["hidden_size"])
    assert wqkv.shape[0] == cfg["num_key_value_heads"] * (groups + 2) * head_dim


def test_special_tokens_template_and_generation_config(tiny_model_dir, tiny_model):
    _, tok = tiny_model
    ids = tok.convert_tokens_to_ids(OFFICIAL_SPECIAL_TOKENS_IN_ID_ORDER)
    assert ids == list(range(ids[0], ids[0] + len(ids))), "special tokens must be consecutive, official order"
    assert ids[-1] == len(tok) - 1
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tok("hi").input_ids[0] == 1, "BOS is prepended, as InternLM2's tokenizer does"
    assert tok.tokenize("<img><IMG_CONTEXT></img>") == ["<img>", "<IMG_CONTEXT>", "</img>"]
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    tcfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == internvl.HF_CHAT_TEMPLATE
    assert tcfg["additional_special_tokens"] == list(internvl.ADDITIONAL_SPECIAL_TOKENS)


def test_chinese_is_tokenized_into_multi_character_pieces(tiny_model):
    _, tok = tiny_model
    text = "请你根据这张图片，讲一个脑洞大开的梗"
    pieces = tok.tokenize(text)
    assert len(pieces) < len(text), pieces
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_conversation_renders_the_official_prompt(tiny_model):
    model, _ = tiny_model
    query, _ = model._build_query("<image>\n讲个梗", [], [1], "<img>", "</img>", "<IMG_CONTEXT>")
    n = model.num_image_token
    assert query == (
        f"<|im_start|>system\n{OFFICIAL_SYSTEM}<|im_end|><|im_start|>user\n<img>{'<IMG_CONTEXT>' * n}</img>\n"
        "讲个梗<|im_end|><|im_start|>assistant\n"
    )


def _pixels(model, n_tiles=3):
    torch.manual_seed(0)
    return torch.randn(n_tiles, 3, 448, 448)


def test_chat_batch_chat_and_history(tiny_model):
    model, tok = tiny_model
    pv = _pixels(model)
    gen = dict(max_new_tokens=6, do_sample=False)
    answer = model.chat(tok, pv, "请你根据这张图片，讲一个脑洞大开的梗", gen)
    assert isinstance(answer, str)
    again = model.chat(tok, pv, "请你根据这张图片，讲一个脑洞大开的梗", gen)
    assert again == answer, "greedy decoding is deterministic"
    answer2, history = model.chat(tok, pv, "再讲一个", gen, history=[("<image>\n讲个梗", answer)], return_history=True)
    assert len(history) == 2 and history[-1] == ("再讲一个", answer2)
    answers = model.batch_chat(tok, torch.cat([pv, pv[:1]]), ["讲个梗", "描述一下"], gen, num_patches_list=[3, 1])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_forward_with_labels_gives_finite_loss_and_gradients(tiny_model):
    model, tok = tiny_model
    pv = _pixels(model, 2)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    text = (
        "<|im_start|>user\n<img>"
        + "<IMG_CONTEXT>" * model.num_image_token * 2
        + "</img>\n讲个梗<|im_end|><|im_start|>assistant\n哈哈<|im_end|>"
    )
    batch = tok(text, return_tensors="pt")
    model.train()
    try:
        out = model(
            pixel_values=pv,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.input_ids,
            image_flags=torch.ones(2, 1, dtype=torch.long),
        )
        assert torch.isfinite(out.loss)
        out.loss.backward()
        for p in (
            model.mlp1[1].weight,
            model.language_model.model.layers[0].attention.wqkv.weight,
            model.vision_model.embeddings.patch_embedding.weight,
        ):
            assert p.grad is not None and p.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_mismatched_image_tokens_give_a_clear_error(tiny_model):
    model, tok = tiny_model
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    batch = tok("<img><IMG_CONTEXT></img>", return_tensors="pt")
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        model(pixel_values=_pixels(model, 1), input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def test_peft_lora_attaches_to_the_llm_linear_layers(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, torch_dtype=torch.float32)
    targets = ["wqkv", "wo", "w1", "w2", "w3"]
    lm = get_peft_model(
        model.language_model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    )
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in lm.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == set(targets)
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_build_is_deterministic_and_small(tmp_path):
    a = tiny.build("tiny", tmp_path / "a", seed=0)
    b = tiny.build("tiny", tmp_path / "b", seed=0)
    c = tiny.build("tiny", tmp_path / "c", seed=1)

    def digest(p):
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(a) == digest(b) != digest(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert sum(f.stat().st_size for f in a.iterdir()) < 8 * 2**20


def test_build_refuses_to_overwrite(tmp_path):
    from helpers.errors import BookError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BookError, match="not empty"):
        tiny.build("tiny", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_xtuner_builds_the_model_and_its_dataset(tiny_model_dir, tmp_path):
    """XTuner's own InternVL wrapper and dataset load the tiny model (no 4-bit here)."""
    import torch.distributed as dist
    from peft import LoraConfig
    from PIL import Image
    from xtuner.dataset import InternVL_V1_5_Dataset
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.model import InternVL_V1_5
    from xtuner.utils import PROMPT_TEMPLATE

    (tmp_path / "ex_images").mkdir()
    Image.new("RGB", (500, 300), (200, 120, 40)).save(tmp_path / "ex_images" / "a.jpg")
    rec = {
        "image": "ex_images/a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\n请你根据这张图片，讲一个脑洞大开的梗"},
            {"from": "gpt", "value": "今天也是元气满满的一天"},
        ],
    }
    (tmp_path / "ex_cn.json").write_text(json.dumps([rec, rec], ensure_ascii=False), encoding="utf-8")
    ds = InternVL_V1_5_Dataset(
        model_path=str(tiny_model_dir),
        template=PROMPT_TEMPLATE.internlm2_chat,
        data_paths=str(tmp_path / "ex_cn.json"),
        image_folders=str(tmp_path) + "/",
        max_length=4096,
    )
    if not dist.is_initialized():  # XTuner's InternVL wrapper calls get_rank(); a group of one, on a free port
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    # helpers.data.training_ids encodes a record exactly as XTuner's dataset does
    from helpers import data as book_data

    record = book_data.load_dataset(tmp_path)[0]
    tiles = len(ds[0]["pixel_values"])
    per_tile = internvl.TilingSettings.from_config(tiny_model_dir).num_image_token
    ids, labels = book_data.training_ids(record, ds.tokenizer, tiles * per_tile)

    def as_list(x):
        return x.tolist() if hasattr(x, "tolist") else list(x)

    assert ids == as_list(ds[0]["input_ids"]) and labels == as_list(ds[0]["labels"])
    # the launcher's fix: the trained projector is kept in float32 (mixed precision's master weights)
    from helpers import compat

    assert compat.train_projector_in_float32()
    model = InternVL_V1_5(
        model_path=str(tiny_model_dir),
        freeze_llm=True,
        freeze_visual_encoder=True,
        llm_lora=dict(
            type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=None, task_type="CAUSAL_LM"
        ),
    )
    model.train()
    loss = model(default_collate_fn([ds[0], ds[1]])["data"])["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # XTuner's recipe: LoRA adapters on the frozen LLM, and the projector mlp1 trained in full
    assert {n for n in trainable if "lora_" not in n} == {
        f"model.mlp1.{i}.{w}" for i in (0, 1, 3) for w in ("weight", "bias")
    }
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.model.mlp1.parameters())
    assert any("lora_" in n for n in trainable)
    targets = set(model.model.language_model.peft_config["default"].target_modules)
    assert {"wqkv", "wo", "w1", "w2", "w3"} <= targets


@pytest.mark.parametrize("fallback", ["eager", "sdpa"])
def test_missing_flash_attn_falls_back_as_asked(tiny_model_dir, monkeypatch, fallback):
    """XTuner asks for flash_attention_2; without flash-attn the model uses eager, or SDPA when told to."""
    from transformers import AutoConfig, AutoModel

    monkeypatch.setenv("INTERNVL_ATTN_FALLBACK", fallback)
    cfg = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    cfg.llm_config.attn_implementation = "flash_attention_2"
    model = AutoModel.from_pretrained(tiny_model_dir, config=cfg, trust_remote_code=True, torch_dtype=torch.float32)
    assert model.language_model.config.attn_implementation == fallback
    ids = torch.randint(3, 700, (1, 24))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        got = model.language_model(input_ids=ids, attention_mask=mask).logits
    monkeypatch.setenv("INTERNVL_ATTN_FALLBACK", "eager")
    cfg.llm_config.attn_implementation = "flash_attention_2"
    eager = AutoModel.from_pretrained(tiny_model_dir, config=cfg, trust_remote_code=True, torch_dtype=torch.float32)
    with torch.no_grad():
        ref = eager.language_model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, ref, atol=1e-5)


def test_an_unknown_attention_fallback_is_refused(tiny_model_dir, monkeypatch):
    from transformers import AutoConfig, AutoModel

    monkeypatch.setenv("INTERNVL_ATTN_FALLBACK", "flash")
    cfg = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    cfg.llm_config.attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="INTERNVL_ATTN_FALLBACK"):
        AutoModel.from_pretrained(tiny_model_dir, config=cfg, trust_remote_code=True)


def test_odd_width_4bit_layers_are_kept_off_the_fused_bnb_kernel():
    """Both LM heads are odd (the tiny vocabulary's 805 pieces, InternVL2-2B's 92,553): bitsandbytes
    0.50.2's fused 4-bit kernel stops a GPU on them with 'misaligned address' (seen on an H200 for 33-512
    rows of the tiny head and 16 rows of the 2B head), so the training launcher routes such layers to
    dequantise + matmul. Only the routing is checked here; the kernel needs a GPU."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.backends.cuda import ops

    from helpers import compat

    saved = ops._gemm_4bit_use_custom_fn
    try:
        assert compat.avoid_bnb_misaligned_4bit_gemm()
        guard = ops._gemm_4bit_use_custom_fn
        assert compat.avoid_bnb_misaligned_4bit_gemm() and ops._gemm_4bit_use_custom_fn is guard
        for rows in (4, 33, 306, 512):
            assert guard(0, torch.float16, rows, 805, 128) is False
            assert guard(0, torch.bfloat16, rows, 92553, 2048) is False
        assert guard(0, torch.float16, 3, 805, 128) is True  # 1-3 rows: one value per store, unaffected
        assert guard(0, torch.float16, 4, 806, 128) is True  # even widths: bitsandbytes' own choice
    finally:
        ops._gemm_4bit_use_custom_fn = saved
