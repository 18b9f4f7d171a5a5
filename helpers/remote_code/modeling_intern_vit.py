# InternViT vision encoder, written for this book (torch + transformers only).
# Module and parameter names follow the official InternViT so that checkpoints
# share weight names: embeddings.{class_embedding, patch_embedding, position_embedding},
# encoder.layers.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, norm1, norm2, ls1, ls2}.
from typing import Optional, Tuple, Union

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel

from .configuration_intern_vit import InternVisionConfig

try:  # the official model uses flash-attn when it is installed; this one uses PyTorch SDPA
    from flash_attn import flash_attn_func  # noqa: F401

    has_flash_attn = True
except Exception:  # ImportError, or a flash-attn built for another CUDA/torch
    has_flash_attn = False


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


NORM2FN = {"rms_norm": InternRMSNorm, "layer_norm": nn.LayerNorm}


class InternVisionEmbeddings(nn.Module):
    """Patchify with a strided convolution, prepend a class token, add position embeddings."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _get_pos_embed(self, pos_embed, H, W):
        target_dtype = pos_embed.dtype
        side = self.image_size // self.patch_size
        pos_embed = pos_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if (H, W) != (side, side):
            pos_embed = F.interpolate(pos_embed, size=(H, W), mode="bicubic", align_corners=False)
        return pos_embed.reshape(1, -1, H * W).permute(0, 2, 1).to(target_dtype)

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))  # (B, C, H, W)
        batch_size, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch_size, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position_embedding = torch.cat(
            [self.position_embedding[:, :1, :], self._get_pos_embed(self.position_embedding[:, 1:, :], height, width)],
            dim=1,
        )
        return embeddings + position_embedding.to(target_dtype)


class InternAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (and optional q/k norm)."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size {self.embed_dim} is not divisible by num_attention_heads {self.num_heads}")
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = config.attention_dropout
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        B, N, C = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        if self.qk_normalization:
            q = self.q_norm(q.transpose(1, 2).flatten(-2)).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2)).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    """Pre-norm transformer block with per-channel layer scale (``ls1``, ``ls2``)."""

    def __init__(self, config: InternVisionConfig, drop_path_rate: float):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = NORM2FN[config.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[config.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.drop_path_rate = drop_path_rate

    def _drop_path(self, x):
        if not self.training or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor]:
        hidden_states = hidden_states + self._drop_path(self.attn(self.norm1(hidden_states)) * self.ls1)
        hidden_states = hidden_states + self._drop_path(self.mlp(self.norm2(hidden_states)) * self.ls2)
        return (hidden_states,)


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        n = config.num_hidden_layers
        dpr = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear decay rule
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, dpr[i]) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, output_hidden_states=None, return_dict=None):
        encoder_states = () if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                encoder_states = encoder_states + (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)[0]
            else:
                hidden_states = layer(hidden_states)[0]
        if output_hidden_states:
            encoder_states = encoder_states + (hidden_states,)
        if not return_dict:
            return tuple(v for v in [hidden_states, encoder_states] if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=encoder_states)


class InternVisionModel(PreTrainedModel):
    main_input_name = "pixel_values"
    config_class = InternVisionConfig
    _no_split_modules = ["InternVisionEncoderLayer"]
    supports_gradient_checkpointing = True

    def __init__(self, config: InternVisionConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        if int(transformers.__version__.split(".")[0]) >= 5:  # see modeling_internvl_chat.py
            self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        pixel_embeds: Optional[torch.FloatTensor] = None,
    ) -> Union[Tuple, BaseModelOutputWithPooling]:
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if pixel_values is None and pixel_embeds is None:
            raise ValueError("pass pixel_values (N, 3, H, W) or pixel_embeds")
        hidden_states = pixel_embeds if pixel_embeds is not None else self.embeddings(pixel_values)
        encoder_outputs = self.encoder(hidden_states, output_hidden_states=output_hidden_states, return_dict=return_dict)
        last_hidden_state = encoder_outputs.last_hidden_state if return_dict else encoder_outputs[0]
        pooled_output = last_hidden_state[:, 0, :]
        if not return_dict:
            return (last_hidden_state, pooled_output) + tuple(encoder_outputs[1:])
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
        )
