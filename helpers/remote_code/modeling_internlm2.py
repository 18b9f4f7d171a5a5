# InternLM2 causal language model, written for this book (torch + transformers only).
# Parameter names follow the official InternLM2 so checkpoints are interchangeable:
#   model.tok_embeddings, model.layers.N.attention.{wqkv, wo},
#   model.layers.N.feed_forward.{w1, w2, w3}, model.layers.N.{attention_norm, ffn_norm},
#   model.norm, output.
# ``wqkv`` packs, for each key/value head, its group of query heads followed by
# one key head and one value head: rows = num_kv_heads * (groups + 2) * head_dim.
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import transformers
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internlm2 import InternLM2Config


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """Rotary position embedding; ``rope_scaling={"type": "dynamic"}`` gives dynamic NTK scaling."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads
        self.base = float(config.rope_theta)
        self.max_position_embeddings = config.max_position_embeddings
        scaling = config.rope_scaling or {}
        self.scaling_type = scaling.get("type", scaling.get("rope_type"))
        self.scaling_factor = float(scaling.get("factor", 1.0))
        if self.scaling_type not in (None, "dynamic", "linear"):
            raise ValueError(f"rope_scaling type {self.scaling_type!r} is not supported (dynamic, linear)")

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor):
        base = self.base
        pos = position_ids.float()
        if self.scaling_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_position_embeddings:
                base = base * (
                    (self.scaling_factor * seq_len / self.max_position_embeddings) - (self.scaling_factor - 1)
                ) ** (self.dim / (self.dim - 2))
        elif self.scaling_type == "linear":
            pos = pos / self.scaling_factor
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2, device=x.device, dtype=torch.float32) / self.dim))
        freqs = pos[..., None] * inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class InternLM2MLP(nn.Module):
    """SwiGLU feed-forward: ``w2(act(w1 x) * w3 x)``."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Grouped-query attention with the fused, group-interleaved ``wqkv`` projection."""

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        self.wqkv = nn.Linear(
            self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=config.bias
        )
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        bsz, q_len, _ = hidden_states.shape
        qkv = self.wqkv(hidden_states).view(
            bsz, q_len, self.num_key_value_heads, self.num_key_value_groups + 2, self.head_dim
        )
        query_states = qkv[..., : self.num_key_value_groups, :].reshape(bsz, q_len, self.num_heads, self.head_dim)
        key_states = qkv[..., -2, :]
        value_states = qkv[..., -1, :]
        query_states = query_states.transpose(1, 2)  # (B, H, T, D)
        key_states = key_states.transpose(1, 2)  # (B, KV, T, D)
        value_states = value_states.transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_value is not None:
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx)

        key_states = key_states.repeat_interleave(self.num_key_value_groups, dim=1)
        value_states = value_states.repeat_interleave(self.num_key_value_groups, dim=1)

        attn_weights = None
        if self.config.attn_implementation == "eager" or output_attentions:
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                attn_weights = attn_weights + attention_mask
            attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
            attn_output = torch.matmul(attn_weights, value_states)
        else:  # "sdpa" and "flash_attention_2": PyTorch's fused attention kernels
            attn_output = F.scaled_dot_product_attention(query_states, key_states, value_states, attn_mask=attention_mask)
        attn_output = attn_output.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.wo(attn_output), (attn_weights if output_attentions else None)


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        residual = hidden_states
        hidden_states, attn_weights = self.attention(
            self.attention_norm(hidden_states), position_embeddings, attention_mask, past_key_value,
            output_attentions, use_cache,
        )
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return hidden_states, attn_weights


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


def _build_attention_mask(attention_mask, input_tensor, past_len, dtype):
    """Additive (B, 1, T, past+T) mask: causal, plus padding from a 2-D ``attention_mask``."""
    bsz, q_len = input_tensor.shape[:2]
    kv_len = past_len + q_len
    device = input_tensor.device
    min_val = torch.finfo(dtype).min
    q_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None, :, :].expand(bsz, 1, q_len, kv_len)
    if attention_mask is not None:
        if attention_mask.dim() == 4:  # already a 4-D mask (e.g. from XTuner's packing)
            return attention_mask.to(dtype)
        pad = attention_mask[:, None, None, -kv_len:].bool()
        allowed = allowed & pad
    mask = torch.zeros(bsz, 1, q_len, kv_len, device=device, dtype=dtype)
    mask = mask.masked_fill(~allowed, min_val)
    # rows that see nothing (left padding) would give NaN in softmax: let them see themselves
    fully_masked = ~allowed.any(-1, keepdim=True)
    return mask.masked_fill(fully_masked, 0.0)


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Union[Cache, List[torch.FloatTensor]]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        elif use_cache and not isinstance(past_key_values, Cache):
            past_key_values = DynamicCache.from_legacy_cache(past_key_values)
        past_len = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
        bsz, q_len = inputs_embeds.shape[:2]
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
            else:
                position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)[None].expand(bsz, -1)
        mask = _build_attention_mask(attention_mask, inputs_embeds, past_len, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_attns = () if output_attentions else None
        cache = past_key_values if use_cache else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states, attn = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, position_embeddings, mask, None, output_attentions, False
                )
            else:
                hidden_states, attn = layer(hidden_states, position_embeddings, mask, cache, output_attentions, use_cache)
            if output_attentions:
                all_attns += (attn,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if not return_dict:
            return tuple(v for v in [hidden_states, cache, all_hidden_states, all_attns] if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=cache,
            hidden_states=all_hidden_states, attentions=all_attns,
        )


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    # the output layer may share the embeddings' weight (InternVL2 does not: tie_word_embeddings=False);
    # transformers 4.x lists such weights, 5.x maps each to its source
    _tied_weights_keys = (["output.weight"] if int(transformers.__version__.split(".")[0]) < 5
                          else {"output.weight": "model.tok_embeddings.weight"})

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

    def get_decoder(self):
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Union[Cache, List[torch.FloatTensor]]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, cache_position=cache_position,
        )
        logits = self.output(outputs.last_hidden_state).float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
        if not return_dict:
            output = (logits, outputs.past_key_values, outputs.hidden_states, outputs.attentions)
            output = tuple(v for v in output if v is not None)
            return (loss,) + output if loss is not None else output
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
