"""Model FLOPs of one QLoRA training sample of InternVL2, and the GPUs' dense bf16 peaks.

Model FLOPs utilisation (MFU) = achieved model FLOPs per second / the GPU's
dense bf16 peak. We count the FLOPs the training *needs* (not the FLOPs of
recomputation under gradient checkpointing, nor of 4-bit dequantisation), a
multiply-add as 2 FLOPs, for a sample of ``s`` tokens (text + image) and
``t`` image tiles:

* **language model** (frozen base, ``N`` = weights of its linear layers incl.
  the output head, ``L`` layers, hidden ``h``): forward ``2N`` per token, the
  backward pass needs only gradients with respect to the inputs, ``2N``, so
  ``4N`` per token; LoRA adapters (``N_lora`` trainable weights) forward +
  both backward products, ``6 N_lora`` per token; attention scores and
  weighted sum (no weights) ``4 s h`` per layer and token forward, twice that
  backward: ``12 L s h`` per token (full, not causal-halved, as in PaLM's MFU).
* **projector** ``mlp1`` (trained): ``6 N_mlp1`` per image token.
* **vision encoder** (frozen, nothing before it needs a gradient, so forward
  only): ``2 N_vit`` per patch plus ``4 p h_v`` per layer and patch for its
  attention, with ``p`` = patches per tile (1,025 for 448-pixel tiles of 14).

    sample = s (4N + 6 N_lora + 12 L s h) + t * 256 * 6 N_mlp1 + t * p (2 N_vit + 4 L_v p h_v)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import memory
from helpers.internvl import TilingSettings

#: Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s.
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (``torch.cuda.get_device_name``), or None."""
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        words = key.split()
        if all(w.lower() in device_name.lower() for w in words):
            return PEAK_BF16[key]
    return None


def gpu_uuid() -> str | None:
    """The first CUDA GPU's UUID, or None without one.

    Two lent machines of one kind differ by up to 8% in speed; a results file that records the UUID
    shows whether two rows, and so their ratio, came from the same GPU.
    """
    import torch

    return str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None


def training_flops_per_sample(
    cfg: dict[str, Any],
    *,
    text_tokens: float,
    tiles: float,
    lora_r: int,
    lora_targets: list[str] | None = None,
    checkpointing: bool = True,
) -> dict[str, float]:
    """Model FLOPs of one training sample, by part (see the module docstring for the formula).

    ``cfg`` is an InternVL2 ``config.json`` as a dict; ``text_tokens`` the
    sample's tokens other than ``<IMG_CONTEXT>``; ``tiles`` may be a mean over samples. ``checkpointing`` does not
    change model FLOPs; the recomputed forward pass is reported apart as
    ``recompute`` (hardware FLOPs = total + recompute).

    >>> from helpers.tiny import model_config
    >>> f = training_flops_per_sample(model_config("internvl2-2b"), text_tokens=200, tiles=7, lora_r=128)
    >>> round(f["total"] / 1e12, 1)   # TFLOP for 1,992 tokens
    22.8
    """
    groups = memory.parameter_groups(cfg)
    llm, vis = cfg["llm_config"], cfg["vision_config"]
    settings = TilingSettings.from_config(cfg)
    patches = (settings.image_size // vis["patch_size"]) ** 2 + 1
    image_tokens = tiles * settings.num_image_token
    s = text_tokens + image_tokens
    n, n_lora = groups["llm_linear"], memory.lora_parameters(cfg, lora_r, lora_targets)
    layers, hidden = llm["num_hidden_layers"], llm["hidden_size"]
    parts = {
        "llm_weights": s * 4 * n,
        "llm_lora": s * 6 * n_lora,
        "llm_attention": s * 12 * layers * s * hidden,
        "projector": image_tokens * 6 * groups["mlp1"],
        "vision": tiles
        * patches
        * (2 * groups["vision_model"] + 4 * vis["num_hidden_layers"] * patches * vis["hidden_size"]),
    }
    parts["total"] = sum(parts.values())
    parts["recompute"] = (s * 2 * (n + n_lora) + s * 4 * layers * s * hidden) if checkpointing else 0.0
    parts["tokens"] = s
    return {k: float(v) for k, v in parts.items()}


def throughput(samples_per_s: float, mean_tokens: float, cost: dict[str, float], peak: float | None) -> dict:
    """The throughput fields every training result carries: samples/s, tokens/s, FLOPs per sample and MFU."""
    return {
        "samples_per_second": round(samples_per_s, 3),
        "mean_tokens_per_sample": round(mean_tokens, 1),
        "tokens_per_second": round(samples_per_s * mean_tokens, 1),
        "model_flops_per_sample": cost,
        "mfu": round(samples_per_s * cost["total"] / peak, 4) if peak else None,
        "peak_bf16_flops": peak,
    }
