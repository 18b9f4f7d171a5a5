"""What QLoRA costs in memory, computed from the real architecture.

Counts come from the model itself, built on PyTorch's ``meta`` device (shapes
without storage), so the numbers for InternVL2-2B are exact without
allocating its 4.4 GB. The byte costs follow bitsandbytes' NF4 layout
(4-bit codes, one absmax scale per block of 64 weights; with double
quantisation the scales are 8-bit with an fp32 scale per 256 blocks).
Activation memory is an estimate (stated formula), meant for planning;
``benchmarks/results/train-*.json`` holds measured peaks to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GiB = 2**30
NF4_BYTES = 0.5 + 4 / 64  # 4-bit code + fp32 absmax per 64-weight block
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # double quantisation: 8-bit absmax + fp32 per 256 blocks


def meta_model(cfg: dict[str, Any]):
    """InternVLChatModel with the shapes of ``cfg`` (a ``config.json`` dict) on the meta device."""
    import torch

    from .remote_code.configuration_internvl_chat import InternVLChatConfig
    from .remote_code.modeling_internvl_chat import InternVLChatModel

    config = InternVLChatConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        return InternVLChatModel(config)


def parameter_groups(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameters per block: vision encoder, projector, LLM linear layers, LLM embeddings, LLM norms.

    >>> from helpers.tiny import model_config
    >>> g = parameter_groups(model_config("internvl2-2b"))
    >>> sum(g.values())
    2205754368
    """
    from torch import nn

    model = meta_model(cfg)
    lm = model.language_model
    linear = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear))
    emb = lm.model.tok_embeddings.weight.numel()
    llm_total = sum(p.numel() for p in lm.parameters())
    return {
        "vision_model": sum(p.numel() for p in model.vision_model.parameters()),
        "mlp1": sum(p.numel() for p in model.mlp1.parameters()),
        "llm_linear": linear,
        "llm_embeddings": emb,
        "llm_norms": llm_total - linear - emb,
    }


def lora_parameters(cfg: dict[str, Any], r: int, targets: list[str] | None = None) -> int:
    """Trainable LoRA parameters: ``r * (in + out)`` for every targeted linear layer of the LLM.

    ``targets=None`` means every linear layer (XTuner's default), output layer included.
    """
    from torch import nn

    lm = meta_model(cfg).language_model
    total = 0
    for name, m in lm.named_modules():
        if isinstance(m, nn.Linear) and (targets is None or name.rsplit(".", 1)[-1] in targets):
            total += r * (m.in_features + m.out_features)
    return total


@dataclass(frozen=True)
class Line:
    """One row of the memory table."""

    item: str
    gib: float
    how: str


def estimate(
    cfg: dict[str, Any],
    *,
    r: int,
    seq_len: int,
    batch: int,
    quantize: bool = True,
    double_quant: bool = True,
    gradient_checkpointing: bool = True,
) -> list[Line]:
    """Training memory of LoRA/QLoRA on InternVL2, item by item (GiB).

    Assumes what XTuner does: frozen bf16 vision encoder, trainable bf16
    projector ``mlp1``, LLM linear layers in NF4 (``quantize``) or, without
    quantisation, fp32 (peft's ``prepare_model_for_kbit_training``, which XTuner
    always calls, upcasts them),
    everything else of the LLM upcast to fp32 by peft's
    ``prepare_model_for_kbit_training``, fp32 LoRA weights with AdamW (two
    fp32 moments), gradient checkpointing on the LLM, eager attention.
    """
    g = parameter_groups(cfg)
    llm = cfg["llm_config"]
    hidden, layers, heads = llm["hidden_size"], llm["num_hidden_layers"], llm["num_attention_heads"]
    vocab, inter = llm["vocab_size"], llm["intermediate_size"]
    lora = lora_parameters(cfg, r)
    # unquantised, XTuner still calls prepare_model_for_kbit_training, which upcasts the LLM to fp32
    per_w = (NF4_DQ_BYTES if double_quant else NF4_BYTES) if quantize else 4
    tokens = seq_len * batch
    ckpt = layers * tokens * hidden * 4 if gradient_checkpointing else 0
    one_layer = tokens * (6 * hidden + 3 * inter) * 4 + batch * heads * seq_len**2 * 4 * 2
    if not gradient_checkpointing:
        one_layer *= layers
    logits = tokens * vocab * 4 * 3  # fp32 logits, their softmax and its gradient
    lines = [
        Line("vision encoder weights (bf16, frozen)", g["vision_model"] * 2 / GiB, "2 bytes/param"),
        Line(
            "LLM linear weights ("
            + (
                "NF4" + (" + double quant" if double_quant else "")
                if quantize
                else "fp32 after prepare_model_for_kbit_training"
            )
            + ")",
            g["llm_linear"] * per_w / GiB,
            f"{per_w:.3f} bytes/param",
        ),
        Line(
            "LLM embeddings + norms (fp32 after prepare_model_for_kbit_training)",
            (g["llm_embeddings"] + g["llm_norms"]) * 4 / GiB,
            "4 bytes/param",
        ),
        Line(f"LoRA r={r} weights + grads + AdamW moments (fp32)", lora * 4 * 4 / GiB, f"{lora:,} params x 16 bytes"),
        # fp32: XTuner loads it in bf16, and the book's launcher casts it to fp32 before training
        # (helpers.compat.train_projector_in_float32)
        Line("projector mlp1 weights + grads + AdamW moments (fp32)", g["mlp1"] * 4 * 4 / GiB, "16 bytes/param"),
        Line("activations kept for gradient checkpointing", ckpt / GiB, "layers x tokens x hidden x 4 B"),
        Line(
            "one decoder layer recomputed (MLP + eager attention scores)",
            one_layer / GiB,
            "tokens x (6h + 3i) x 4 B + heads x seq^2 x 8 B",
        ),
        Line("logits, softmax and gradient (fp32)", logits / GiB, "tokens x vocab x 12 B"),
    ]
    return lines


def table(lines: list[Line]) -> str:
    """A plain-text table with a total."""
    width = max(len(line.item) for line in lines)
    rows = [f"{line.item:<{width}}  {line.gib:8.2f} GiB   {line.how}" for line in lines]
    rows.append(f"{'total':<{width}}  {sum(line.gib for line in lines):8.2f} GiB")
    return "\n".join(rows)
