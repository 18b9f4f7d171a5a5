# InternVL2 chat model, written for this book (torch + transformers only).
# Same structure, parameter names and chat()/batch_chat() interface as the official
# InternVLChatModel: vision_model (InternViT) -> pixel shuffle -> mlp1 -> language_model (InternLM2).
import os
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
import transformers
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel, has_flash_attn
from .modeling_internlm2 import InternLM2ForCausalLM

# transformers >= 5 keeps load-time bookkeeping (tied weights, fp32 modules) in post_init();
# 4.x would re-initialise weights there, so it is called on 5.x only.
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _supports_flash_attn_2 = True
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVisionModel", "InternLM2DecoderLayer"]

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        # tokens per 448-px tile: (448/14)^2 patches, pixel shuffle keeps 1/4 -> 256 for InternVL2-2B
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        # As the official model: flash-attention only when the package is importable, otherwise eager.
        # This book's code only: INTERNVL_ATTN_FALLBACK=sdpa falls back to PyTorch's fused attention
        # (scaled_dot_product_attention) instead, the same maths without the (s x s) score matrix.
        use_flash_attn = use_flash_attn if has_flash_attn else False
        config.vision_config.use_flash_attn = bool(use_flash_attn)
        if config.llm_config.attn_implementation == "flash_attention_2" and not use_flash_attn:
            fallback = os.environ.get("INTERNVL_ATTN_FALLBACK", "eager")
            if fallback not in ("eager", "sdpa"):
                raise ValueError(f"INTERNVL_ATTN_FALLBACK={fallback!r}: use 'eager' or 'sdpa'")
            config.llm_config.attn_implementation = fallback

        self.vision_model = vision_model if vision_model is not None else InternVisionModel(config.vision_config)
        self.language_model = (
            language_model if language_model is not None else InternLM2ForCausalLM(config.llm_config)
        )
        vit_hidden_size = config.vision_config.hidden_size
        llm_hidden_size = config.llm_config.hidden_size
        scale = int(1 / self.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden_size * scale),
            nn.Linear(vit_hidden_size * scale, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template)
        self.system_message = self.conv_template.system_message
        if _TRANSFORMERS_5:
            self.post_init()

    def _init_weights(self, module):
        std = getattr(self.config.llm_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # ----- vision path -------------------------------------------------------------
    def pixel_shuffle(self, x, scale_factor=0.5):
        """(N, W, H, C) -> (N, W*s, H*s, C/s^2): trade spatial resolution for channels."""
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version == "v1":
            warnings.warn("In ps_version 'v1', the height and width have not been swapped back, "
                          "which results in a transposed image.")
        else:
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values):
        """Tiles (N, 3, 448, 448) -> image tokens (N, num_image_token, llm_hidden)."""
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=False,
                                           return_dict=True).last_hidden_state
        else:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                           return_dict=True).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop the class token
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def _merge_image_tokens(self, input_ids, input_embeds, vit_embeds):
        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        vit_embeds = vit_embeds.reshape(-1, self.num_image_token, C)
        n_slots, n_feats = int(selected.sum()), vit_embeds.shape[0] * vit_embeds.shape[1]
        if n_slots != n_feats:
            raise ValueError(
                f"the prompt has {n_slots} <IMG_CONTEXT> tokens but the images give {n_feats} features "
                f"({vit_embeds.shape[0]} tiles x {self.num_image_token}); build the prompt with "
                f"num_image_token * num_patches context tokens per image"
            )
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C).to(input_embeds.dtype)
        return input_embeds.reshape(B, N, C)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        image_flags: Optional[torch.LongTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if self.img_context_token_id is None:
            raise ValueError("set model.img_context_token_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>') first")
        if image_flags is None:
            image_flags = torch.ones(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
        image_flags = image_flags.reshape(-1)  # (N, 1) from XTuner-style collators, or (N,)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]
        input_embeds = self._merge_image_tokens(input_ids, input_embeds, vit_embeds)
        outputs = self.language_model(
            inputs_embeds=input_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.language_model.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
        if not return_dict:
            output = (logits,) + tuple(v for v in (outputs.past_key_values,) if v is not None)
            return (loss,) + output if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    # ----- chat interface (same signatures as the official model) ------------------
    def _build_query(self, question, history, num_patches_list, img_start, img_end, img_context):
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for num_patches in num_patches_list:
            image_tokens = img_start + img_context * self.num_image_token * num_patches + img_end
            query = query.replace("<image>", image_tokens, 1)
        return query, template

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN,
             IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False):
        """Answer ``question`` about the image tiles in ``pixel_values``; ``history`` = [(q, a), ...]."""
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(f"pixel_values has {len(pixel_values)} tiles but num_patches_list sums to "
                             f"{sum(num_patches_list)}")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        history = [] if history is None else history
        query, template = self._build_query(question, history, num_patches_list, IMG_START_TOKEN, IMG_END_TOKEN,
                                            IMG_CONTEXT_TOKEN)
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
        if verbose and pixel_values is not None:
            print(f"dynamic ViT batch size: {pixel_values.shape[0]}")
        model_inputs = tokenizer(query, return_tensors="pt")
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = eos_token_id
        generation_output = self.generate(
            pixel_values=pixel_values, input_ids=model_inputs["input_ids"].to(self.device),
            attention_mask=model_inputs["attention_mask"].to(self.device), **generation_config,
        )
        response = tokenizer.batch_decode(generation_output, skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history.append((question, response))
        if return_history:
            return response, history
        if verbose:
            shown = query.replace(IMG_CONTEXT_TOKEN, "").replace(f"{IMG_START_TOKEN}{IMG_END_TOKEN}", "<image>")
            print(shown, response)
        return response

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN=IMG_START_TOKEN,
                   IMG_END_TOKEN=IMG_END_TOKEN, IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False,
                   image_counts=None):
        """One question per image, answered in one left-padded batch."""
        if history is not None or return_history:
            raise NotImplementedError("multi-turn chat is not supported in batch_chat; use chat(history=...)")
        if image_counts is not None:
            num_patches_list = image_counts
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        template = None
        for idx, num_patches in enumerate(num_patches_list):
            question = questions[idx]
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\n" + question
            query, template = self._build_query(question, [], [num_patches], IMG_START_TOKEN, IMG_END_TOKEN,
                                                IMG_CONTEXT_TOKEN)
            queries.append(query)
        tokenizer.padding_side = "left"
        model_inputs = tokenizer(queries, return_tensors="pt", padding=True)
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        generation_output = self.generate(
            pixel_values=pixel_values, input_ids=model_inputs["input_ids"].to(self.device),
            attention_mask=model_inputs["attention_mask"].to(self.device), **generation_config,
        )
        responses = tokenizer.batch_decode(generation_output, skip_special_tokens=True)
        return [r.split(template.sep.strip())[0].strip() for r in responses]

    @torch.no_grad()
    def generate(self, pixel_values: Optional[torch.FloatTensor] = None, input_ids: Optional[torch.LongTensor] = None,
                 attention_mask: Optional[torch.LongTensor] = None, visual_features: Optional[torch.FloatTensor] = None,
                 generation_config: Optional[GenerationConfig] = None, output_hidden_states: Optional[bool] = None,
                 **generate_kwargs) -> torch.LongTensor:
        if pixel_values is not None:
            if self.img_context_token_id is None:
                raise ValueError("set model.img_context_token_id before generate() with images")
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(
                pixel_values.to(self.dtype))
            input_embeds = self.language_model.get_input_embeddings()(input_ids)
            input_embeds = self._merge_image_tokens(input_ids, input_embeds, vit_embeds)
        else:
            input_embeds = self.language_model.get_input_embeddings()(input_ids)
        return self.language_model.generate(
            inputs_embeds=input_embeds, attention_mask=attention_mask, generation_config=generation_config,
            output_hidden_states=output_hidden_states, use_cache=True, **generate_kwargs,
        )

    @property
    def lm_head(self):
        return self.language_model.get_output_embeddings()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()
