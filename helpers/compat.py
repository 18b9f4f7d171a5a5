"""Small, documented compatibility fixes for the pinned stack. Each says why it exists.

They are applied explicitly (never on import) by the code that needs them:
:mod:`helpers.xtuner_launch` applies :func:`allow_bnb_4bit_on_cpu` in the
training process, so that real NF4 QLoRA runs on a CPU, and
:func:`avoid_bnb_misaligned_4bit_gemm` there on every machine; the speed
levers :func:`use_sdpa_attention` (through :func:`sdpa_attention_for_xtuner`)
and :func:`bnb_compute_dtype` when the XTuner config asks for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UsageError


def allow_bnb_4bit_on_cpu() -> bool:
    """Let transformers 4.48.0 load a 4-bit (bitsandbytes) model on a CPU-only machine.

    bitsandbytes 0.50.2 has CPU kernels for NF4 ``Linear4bit`` (forward and
    backward), but transformers 4.48.0's backend check, written for an older
    bitsandbytes, crashes on CPU-only machines with
    ``AttributeError: 'frozenset' object has no attribute 'discard'`` before
    it asks bitsandbytes anything. We wrap the check: when it fails with that
    error and bitsandbytes reports CPU support, loading goes on. On a GPU, or
    when the bug is absent, nothing changes. Returns True when the wrapper is
    in place.
    """
    import transformers.integrations as integrations

    original = integrations.validate_bnb_backend_availability
    if getattr(original, "_book_compat", False):
        return True

    def validate(raise_exception: bool = False) -> bool:
        try:
            return original(raise_exception=raise_exception)
        except AttributeError as exc:
            if "frozenset" not in str(exc):
                raise
            import bitsandbytes as bnb

            supported = getattr(bnb, "supported_torch_devices", {"cpu"})
            if "cpu" in supported:
                return True
            if raise_exception:
                raise RuntimeError(f"bitsandbytes {bnb.__version__} has no CPU 4-bit support") from exc
            return False

    validate._book_compat = True  # type: ignore[attr-defined]
    integrations.validate_bnb_backend_availability = validate
    return True


def trust_own_checkpoints() -> None:
    """Let ``torch.load`` read the checkpoints XTuner/mmengine write, in the training process only.

    Since torch 2.6, ``torch.load`` defaults to ``weights_only=True`` and
    refuses pickled Python objects. mmengine 0.10.6 (which XTuner 0.2.0 runs
    on) stores its message hub (``HistoryBuffer``), numpy arrays and the
    config in every checkpoint and loads them back without asking for
    ``weights_only=False``, so resuming fails with ``Weights only load
    failed ... Unsupported global: GLOBAL
    mmengine.logging.history_buffer.HistoryBuffer``. The checkpoints being
    resumed are written by this same training code, so we set torch's own
    switch ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the training process.
    Never do this for checkpoints from elsewhere.
    """
    import os

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"


def epoch_pause(seconds: float = 0.0) -> float:
    """Set the pause mmengine's iteration loop makes at every pass over the data (its own: 2 s).

    When XTuner's training loop (mmengine 0.10.6's ``_InfiniteDataloaderIterator``,
    ``mmengine/runner/loops.py``) reaches the end of the dataloader, it calls
    ``time.sleep(2)`` ("Prevent possible deadlock during epoch transition")
    before it starts the next pass. The sleep was added to mmcv in 2020 as a
    workaround nobody could explain or, by the maintainers' account in
    open-mmlab/mmcv#1912, reproduce. It costs 2 s per epoch: nothing on
    CLoT_cn_2000 (one epoch is 500 iterations of 4 samples), but on the
    book's tiny profile (16 iterations per epoch, 24 epochs) it was 23 of the
    384 iterations' pauses, about 50 s of notebook 04's CPU training, and on
    the GPU benchmarks' 64-sample data every fourth optimizer step took 2.3 s
    longer. We replace the ``time`` module that ``loops.py`` sees with one
    whose ``sleep`` waits ``seconds`` (0: not at all); nothing else changes.
    Returns the pause now in force.
    """
    import types

    from mmengine.runner import loops

    if seconds < 0:
        raise UsageError(f"epoch_pause: seconds must be >= 0 (got {seconds}); mmengine's own pause is 2")
    real = getattr(loops.time, "_book_real", loops.time)
    shim = types.ModuleType("time")
    shim.__dict__.update({k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    shim.sleep = (lambda _s: None) if seconds == 0 else (lambda _s: real.sleep(seconds))
    shim._book_real = real  # type: ignore[attr-defined]
    loops.time = shim
    return seconds


def official_config_on_transformers5() -> bool:
    """Let transformers >= 5 load the official InternVL2 config class (LMDeploy's environment needs it).

    The official ``configuration_internvl_chat.py`` (what InternVL2-2B ships)
    marks its config ``is_composition = True``: it cannot be built without
    arguments (``InternVLChatConfig()`` raises ``ValueError: Unsupported
    architecture``). transformers 4.x read that flag; 5.x renamed it
    ``has_no_defaults_at_init`` and otherwise builds ``self.__class__()`` to
    print the config, so ``AutoConfig.from_pretrained`` fails while it logs
    the config it has just read. LMDeploy 0.18 then falls back to a plain
    ``PretrainedConfig`` whose ``llm_config`` is a dict and stops with
    ``'dict' object has no attribute 'hidden_size'`` (seen on the H200 with
    transformers 5.17, ``requirements/serve.txt``'s pin). We wrap the function
    that loads remote-code config classes so that a class with the old flag
    gets the new one too; nothing else changes. Under transformers 4.x this
    does nothing and returns False; True when the wrapper is in place.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return False
    from transformers.models.auto import configuration_auto as auto

    original = auto.get_class_from_dynamic_module
    if getattr(original, "_book_compat", False):
        return True

    def load_class(*args: object, **kwargs: object) -> type:
        cls = original(*args, **kwargs)
        if getattr(cls, "is_composition", False) and not getattr(cls, "has_no_defaults_at_init", True):
            cls.has_no_defaults_at_init = True
        return cls

    load_class._book_compat = True  # type: ignore[attr-defined]
    auto.get_class_from_dynamic_module = load_class
    return True


def config_needs_arguments(model_dir: str | Path) -> bool:
    """True when the folder's remote-code config class cannot be built without arguments (the official one).

    That is the class :func:`official_config_on_transformers5` must mark for
    transformers 5; the book's own ``InternVLChatConfig`` has defaults.
    """
    from transformers import AutoConfig

    cls = type(AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True))
    try:
        cls()
    except Exception:  # the official class raises ValueError("Unsupported architecture: ")
        return True
    return False


def fast_4bit_compute_on_cpu() -> bool:
    """Make the 4-bit layers XTuner builds compute in float32 on a CPU-only machine.

    XTuner 0.2.0's ``InternVL_V1_5`` hard-codes ``bnb_4bit_compute_dtype=torch.float16``
    (right for GPUs). CPUs have no fast float16 matrix multiply: on 2 cores a
    tiny-model iteration spent most of its time in bitsandbytes' float16
    ``MatMul4Bit`` (about 1.1 s per iteration; float32 is several times
    faster). Without a GPU we swap float16 for float32 in
    ``BitsAndBytesConfig``; the weights stay 4-bit NF4. Returns True when
    the swap is in place. Call it in the training process only.
    """
    return bnb_compute_dtype("float32")


def float32_weights_on_cpu() -> bool:
    """Load the model XTuner trains in float32 instead of bfloat16 on a CPU-only machine.

    XTuner 0.2.0's ``InternVL_V1_5`` loads InternVL2 with ``torch_dtype=torch.bfloat16``
    (right for GPUs). On a CPU every layer that is not 4-bit (the vision
    encoder, the embeddings, the norms) then computes in bfloat16, and the
    hidden states are converted back and forth around each float32 4-bit and
    LoRA layer. CPUs without AVX512-BF16 (most laptops, AMD before Zen 4)
    have no fast bfloat16 arithmetic. Measured with the tiny profile (one
    PyTorch thread, CPU seconds per iteration): 1.40 in bfloat16 against 0.75
    in float32 with PyTorch limited to AVX2, the same within noise (0.54-0.70
    against 0.58-0.72) on a CPU with AVX512-BF16. Without a GPU we
    load the model in float32; the language model stays 4-bit NF4, and the
    LoRA and projector weights were float32 anyway. Returns True when the
    swap is in place. Call it in the training process only.
    """
    import torch
    import transformers

    cls = transformers.AutoModel
    original = cls.from_pretrained.__func__
    if getattr(original, "_book_compat", False):
        return True

    def from_pretrained(klass, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("torch_dtype") in (torch.bfloat16, "bfloat16"):
            kwargs["torch_dtype"] = torch.float32
        return original(klass, *args, **kwargs)

    from_pretrained._book_compat = True  # type: ignore[attr-defined]
    cls.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign]
    return True


def train_projector_in_float32() -> bool:
    """Keep the trainable projector ``mlp1`` in float32 when XTuner trains InternVL2.

    XTuner loads the whole model in bfloat16, so the projector it trains has
    bfloat16 weights and gradients. Under mmengine's ``AmpOptimWrapper``
    (the course's fp16 mixed precision) without DeepSpeed, the GradScaler
    then fails: ``_amp_foreach_non_finite_check_and_unscale_cuda not
    implemented for 'BFloat16'``. Mixed precision expects float32 master
    weights (DeepSpeed keeps its own), so we cast ``mlp1`` to float32 after
    XTuner builds the model and cast its input to the weights' dtype; autocast
    still runs its matrix multiplies in half precision. Its output joins the
    float32 input embeddings (``prepare_model_for_kbit_training`` made them
    float32), as before. Returns True when the patch is in place.
    """
    import torch
    from xtuner.model.internvl import InternVL_V1_5

    original = InternVL_V1_5.__init__
    if getattr(original, "_book_compat", False):
        return True

    def cast_input(module: torch.nn.Module, args: tuple) -> tuple:
        dtype = next(module.parameters()).dtype
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        mlp1 = self.model.mlp1
        if any(p.requires_grad and p.dtype != torch.float32 for p in mlp1.parameters()):
            mlp1.float()
            mlp1.register_forward_pre_hook(cast_input)

    __init__._book_compat = True  # type: ignore[attr-defined]
    InternVL_V1_5.__init__ = __init__  # type: ignore[method-assign]
    return True


def bnb_compute_dtype(dtype: str) -> bool:
    """Make the 4-bit layers XTuner builds compute in ``dtype`` ('bfloat16', 'float32') instead of its float16.

    XTuner 0.2.0's ``InternVL_V1_5`` builds its ``BitsAndBytesConfig`` with
    ``bnb_4bit_compute_dtype=torch.float16``. Under bf16 mixed precision the
    activations are bfloat16, so every 4-bit layer would convert them to
    float16 and back; with bfloat16 compute they stay bfloat16 (and cannot
    overflow as float16 can). Applied by :mod:`helpers.xtuner_launch` when
    the config says ``book_bnb_compute_dtype = 'bfloat16'``, on a GPU only
    (a CPU gets :func:`fast_4bit_compute_on_cpu`). Returns True when in place.
    """
    import torch
    import transformers

    target = getattr(torch, dtype)
    cls = transformers.BitsAndBytesConfig
    original = cls.__init__
    if getattr(original, "_book_compat", False):
        return True

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("bnb_4bit_compute_dtype") in (torch.float16, "float16"):
            kwargs["bnb_4bit_compute_dtype"] = target
        original(self, *args, **kwargs)

    __init__._book_compat = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    return True


def keep_lm_head_unquantized() -> bool:
    """Leave InternVL2's LM head (``output``, 92,553 x 2,048) out of XTuner's 4-bit quantisation.

    XTuner's ``BitsAndBytesConfig`` skips only ``mlp1`` and the vision model,
    so the head, the widest layer, is 4-bit and is dequantised in every
    forward and backward pass (and, with XTuner's default LoRA targets, gets
    a LoRA adapter too). Left out of 4-bit it needs no dequantisation, but
    XTuner then runs PEFT's ``prepare_model_for_kbit_training``, which casts
    every unquantised bf16/fp16 weight to float32 (``peft/utils/other.py``),
    so the head is held in float32: 0.76 GB instead of 0.09 GB in NF4, about
    0.66 GB more (0.65 GiB measured on the H200, fast vs course). Pair it
    with LoRA targets that leave ``output`` out (``Recipe.lora_targets``).
    Applied by :mod:`helpers.xtuner_launch` when the config says
    ``book_lm_head = 'bf16'``. Returns True when in place.
    """
    import transformers

    cls = transformers.BitsAndBytesConfig
    original = cls.__init__
    if getattr(original, "_book_head", False):
        return True

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        skip = kwargs.get("llm_int8_skip_modules")
        if skip is not None and "output" not in skip:
            kwargs["llm_int8_skip_modules"] = [*skip, "output"]
        original(self, *args, **kwargs)

    __init__._book_head = True  # type: ignore[attr-defined]
    __init__._book_compat = getattr(original, "_book_compat", False)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    return True


def checkpointing(use_reentrant: bool | None = None, every: int = 1) -> bool:
    """Choose how the official InternLM2 code checkpoints its layers (gradient checkpointing).

    The official ``modeling_internlm2.py`` calls
    ``torch.utils.checkpoint.checkpoint(layer, ...)`` for every decoder layer
    without saying ``use_reentrant``, so PyTorch's default applies (the
    reentrant variant, with a warning). We wrap that function in the training
    process: ``use_reentrant`` is filled in where the caller left it out
    (False: the non-reentrant variant PyTorch recommends, which stops
    recomputing as soon as the needed tensors exist), and with ``every=2``
    only every second call is checkpointed, the others run as plain calls
    that keep their activations (more memory, less recomputation). The
    count works per call, so a model whose number of checkpointed layers is a
    multiple of ``every`` (InternLM2-1.8B: 24) gets the same layers each pass.
    Returns True when in place.
    """
    import torch.utils.checkpoint as cp

    if every < 1:
        raise UsageError("every must be >= 1")
    original = getattr(cp.checkpoint, "_book_original", cp.checkpoint)
    calls = {"n": 0}

    def checkpoint(function=None, *args, use_reentrant=use_reentrant, **kwargs):  # type: ignore[no-untyped-def]
        if function is not None and every > 1:
            calls["n"] += 1
            if calls["n"] % every:
                return function(*args, **kwargs)
        return original(function, *args, use_reentrant=use_reentrant, **kwargs)

    checkpoint._book_original = original  # type: ignore[attr-defined]
    cp.checkpoint = checkpoint
    return True


def labelled_cross_entropy(hidden, head, labels, chunk_tokens: int = 4096):  # type: ignore[no-untyped-def]
    """Causal-LM loss computed from the hidden states, with logits for the labelled tokens only.

    Equal to ``CrossEntropyLoss()(head(hidden)[:, :-1].float(), labels[:, 1:])``
    (mean over tokens whose label is not -100), which is what XTuner computes
    after the official model has produced float32 logits for *every*
    position: 92,553 numbers per token, 2.9 GB for a micro-batch of four
    1,986-token samples, although only the caption's ~130 tokens per sample
    have a label (image and prompt tokens are -100). Here the head runs on
    the labelled positions only, in chunks of ``chunk_tokens`` rows, each
    under non-reentrant checkpointing so its logits are not kept for the
    backward pass. With no labelled token the loss is 0 (XTuner's: NaN).
    """
    import torch
    import torch.nn.functional as F
    import torch.utils.checkpoint as cp

    # PyTorch's own function, not :func:`checkpointing`'s wrapper: with ``every=2`` these chunks would
    # count as layers and shift which decoder layers are checkpointed from one pass to the next
    checkpoint = getattr(cp.checkpoint, "_book_original", cp.checkpoint)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1).to(h.device)
    keep = y != -100
    h, y = h[keep], y[keep]

    def chunk_loss(a, b):  # type: ignore[no-untyped-def]
        return F.cross_entropy(head(a).float(), b, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk_tokens):
        total = total + checkpoint(chunk_loss, h[i : i + chunk_tokens], y[i : i + chunk_tokens], use_reentrant=False)
    return total / keep.sum().clamp(min=1)


def labelled_logits_for_xtuner() -> bool:
    """Make XTuner's ``InternVL_V1_5`` compute its loss with :func:`labelled_cross_entropy`.

    XTuner 0.2.0's ``_llm_forward`` splices the image features into the
    input embeddings, runs the language model (whose official forward makes
    float32 logits over the whole vocabulary for every position) and then
    its own cross-entropy. We keep its splicing and call it unchanged with
    ``labels=None`` (so it skips its loss); for that call the causal LM's
    ``forward`` is replaced by one that runs the decoder (``.model``) and
    returns the hidden states' loss from :func:`labelled_cross_entropy`
    through a side channel; the result's ``loss`` is then set to it. Applied
    by :mod:`helpers.xtuner_launch` when the config says
    ``book_loss_logits = 'labelled'``. Returns True when in place.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from xtuner.model.internvl import InternVL_V1_5

    original = InternVL_V1_5._llm_forward
    if getattr(original, "_book_compat", False):
        return True

    def _llm_forward(self, *args, labels=None, **kwargs):  # type: ignore[no-untyped-def]
        if labels is None:
            return original(self, *args, **kwargs)
        lm = self.model.language_model
        causal = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        box = {}

        def forward(
            *a,
            inputs_embeds=None,
            attention_mask=None,
            position_ids=None,
            past_key_values=None,
            use_cache=None,
            output_attentions=None,
            output_hidden_states=None,
            **k,
        ):  # type: ignore[no-untyped-def]
            out = causal.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            box["loss"] = labelled_cross_entropy(out.last_hidden_state, causal.output, labels)
            return CausalLMOutputWithPast(logits=out.last_hidden_state[..., :0], past_key_values=out.past_key_values)

        causal.forward = forward
        try:
            outputs = original(self, *args, labels=None, **kwargs)
        finally:
            del causal.forward
        outputs["loss"] = box["loss"]
        return outputs

    _llm_forward._book_compat = True  # type: ignore[attr-defined]
    InternVL_V1_5._llm_forward = _llm_forward  # type: ignore[method-assign]
    return True


def avoid_bnb_misaligned_4bit_gemm() -> bool:
    """Keep 4-bit layers with an odd number of outputs off bitsandbytes 0.50.2's fused GEMM kernel.

    bitsandbytes 0.50 added a fused dequantise-and-multiply kernel for 4-bit
    layers that it picks for small batches (up to 512 tokens for the tiny
    model's LM head ``output``, up to 64 for InternVL2-2B's). Its tensor-core
    version writes two 16-bit outputs at once (one 32-bit store), so with an
    odd number of outputs N every odd row of the result starts on a 2-byte
    boundary and the GPU stops with ``misaligned address``. The error is
    sticky and surfaces later, usually as ``CUBLAS_STATUS_INTERNAL_ERROR when
    calling cublasGemmEx`` in the 4-bit layer's backward pass. Both InternVL2
    vocabularies are odd (the tiny tokenizer's 805 pieces, InternVL2-2B's
    92,553), so the LM head hits it: on an H200, XTuner training of the tiny
    model stopped at its first batch of short samples (iteration 4). We send
    such layers to bitsandbytes' other path (dequantise, then an ordinary
    matrix multiply), the one every larger batch already takes; batches of
    1-3 rows, whose kernel writes one value at a time, keep the fused kernel.
    Layers with an even N are unchanged. Returns True when the guard is in
    place (False without bitsandbytes or without the fused kernel).
    """
    try:
        import torch
        from bitsandbytes.backends.cuda import ops
    except Exception:
        return False
    original = getattr(ops, "_gemm_4bit_use_custom_fn", None)
    if original is None:
        return False
    if getattr(original, "_book_compat", False):
        return True

    def use_custom(device_index, dtype, M, N, K):  # type: ignore[no-untyped-def]
        if N % 2 and M > 3 and dtype != torch.float32:
            return False
        return original(device_index, dtype, M, N, K)

    use_custom._book_compat = True  # type: ignore[attr-defined]
    ops._gemm_4bit_use_custom_fn = use_custom
    return True


# ----------------------------------------------------------------------------------------------
# PyTorch's fused attention (SDPA) for the official InternVL2 code
# ----------------------------------------------------------------------------------------------
def _internlm2_sdpa_forward(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    past_key_value=None,
    output_attentions=False,
    use_cache=False,
    **kwargs,
):
    """The official ``InternLM2Attention.forward`` (eager) with its softmax(QK^T)V replaced by SDPA.

    The projections, the rotary embedding and the key/value cache are the
    official module's own code, looked up in the module that defined the class.
    A mask of ``None`` (see :func:`_causal_mask_or_none`) means "causal, no
    padding", which lets PyTorch pick its flash kernel.
    """
    import torch
    from einops import rearrange

    code = sys.modules[type(self).__module__]
    if output_attentions:  # SDPA returns no weights: the official path does
        return self._book_eager_forward(
            hidden_states, attention_mask, position_ids, past_key_value, output_attentions, use_cache, **kwargs
        )
    bsz, q_len, _ = hidden_states.size()
    qkv = rearrange(
        self.wqkv(hidden_states), "b q (h gs d) -> b q h gs d", gs=2 + self.num_key_value_groups, d=self.head_dim
    )
    query = rearrange(qkv[..., : self.num_key_value_groups, :], "b q h gs d -> b q (h gs) d").transpose(1, 2)
    key = qkv[..., -2, :].transpose(1, 2)
    value = qkv[..., -1, :].transpose(1, 2)
    kv_seq_len = key.shape[-2] + (past_key_value[0].shape[-2] if past_key_value is not None else 0)
    cos, sin = self.rotary_emb(value, seq_len=kv_seq_len)
    query, key = code.apply_rotary_pos_emb(query, key, cos, sin, position_ids)
    if past_key_value is not None:
        key = torch.cat([past_key_value[0], key], dim=2)
        value = torch.cat([past_key_value[1], value], dim=2)
    past_key_value = (key, value) if use_cache else None
    key = code.repeat_kv(key, self.num_key_value_groups)
    value = code.repeat_kv(value, self.num_key_value_groups)
    causal = attention_mask is None and q_len > 1 and q_len == kv_seq_len
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, is_causal=causal
    )
    out = self.wo(out.transpose(1, 2).reshape(bsz, q_len, self.hidden_size))
    return out, None, past_key_value


def _causal_mask_or_none(prepare):  # type: ignore[no-untyped-def]
    """Wrap ``InternLM2Model._prepare_decoder_attention_mask``: no padding and no cache -> ``None``.

    The official model turns the 2-D padding mask into a 4-D additive mask
    for eager attention. When no position is padded (every training sample
    of one micro-batch the same length, or a batch of one) the mask is purely
    causal, and SDPA's ``is_causal=True`` does the same without a mask.
    """

    def wrapped(attention_mask, input_shape, inputs_embeds, past_key_values_length):  # type: ignore[no-untyped-def]
        if past_key_values_length == 0 and attention_mask is not None and bool(attention_mask.all()):
            return None
        return prepare(attention_mask, input_shape, inputs_embeds, past_key_values_length)

    return wrapped


def _intern_vit_sdpa_attn(self, x):  # type: ignore[no-untyped-def]
    """The official ``InternAttention._naive_attn`` with softmax(QK^T * scale)V replaced by SDPA."""
    import torch

    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if self.qk_normalization:
        B_, H_, N_, D_ = q.shape
        q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
        k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
    dropout = self.attn_drop.p if self.training else 0.0
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
    x = self.proj(x.transpose(1, 2).reshape(B, N, C))
    return self.proj_drop(x)


def use_sdpa_attention(model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Give the official InternVL2 code's eager attention PyTorch's fused attention (SDPA), in place.

    Why: the official ``modeling_internlm2.py`` offers ``eager`` and
    ``flash_attention_2`` only, and ``modeling_intern_vit.py`` a naive
    attention or flash-attn; flash-attn has no wheel for the GPU machine
    (torch 2.11 + CUDA 13), so a real InternVL2-2B checkpoint trains with
    eager attention, which materialises every (sequence x sequence) score
    matrix. ``torch.nn.functional.scaled_dot_product_attention`` computes
    the same softmax(QK^T / sqrt(d)) V with fused kernels.

    How: the model classes are loaded dynamically (``transformers_modules.*``),
    so we walk the loaded model's modules and rebind ``forward`` of each
    official ``InternLM2Attention`` (the eager class; its flash-attn subclass
    is left alone), ``_naive_attn`` of each ``InternAttention`` whose
    flash-attn is off, and ``_prepare_decoder_attention_mask`` of
    ``InternLM2Model`` (a purely causal mask becomes ``None``, so SDPA can use
    its flash kernel). Projections, rotary embeddings and the cache are the
    official code's own. The book's own remote code is not touched (it has
    SDPA built in). Idempotent. Returns how many modules were patched, by
    kind. Tested in tests/test_compat.py: same logits and gradients as eager.
    """
    import types

    counts = {"internlm2_attention": 0, "intern_vit_attention": 0, "internlm2_model": 0}
    for module in model.modules():
        cls = type(module)
        code = sys.modules.get(cls.__module__)
        if getattr(module, "_book_sdpa", False) or code is None:
            continue
        official_llm = hasattr(code, "INTERNLM2_ATTENTION_CLASSES") and hasattr(code, "repeat_kv")
        if official_llm and cls.__name__ == "InternLM2Attention":
            module._book_eager_forward = module.forward
            module.forward = types.MethodType(_internlm2_sdpa_forward, module)
            counts["internlm2_attention"] += 1
        elif official_llm and cls.__name__ == "InternLM2Model":
            module._prepare_decoder_attention_mask = _causal_mask_or_none(module._prepare_decoder_attention_mask)
            counts["internlm2_model"] += 1
        elif (
            cls.__name__ == "InternAttention"
            and hasattr(module, "_naive_attn")
            and not getattr(module, "use_flash_attn", False)
            and hasattr(code, "InternVisionEncoder")
        ):
            module._naive_attn = types.MethodType(_intern_vit_sdpa_attn, module)
            counts["intern_vit_attention"] += 1
        else:
            continue
        module._book_sdpa = True
    return counts


def sdpa_attention_for_xtuner() -> bool:
    """Apply :func:`use_sdpa_attention` to the InternVL2 model that XTuner's ``InternVL_V1_5`` loads.

    Applied by :mod:`helpers.xtuner_launch` when the config asks for it
    (``book_attention = 'sdpa'``, from ``Recipe.attention``). Prints what was
    patched, so that the training log shows it. Returns True when in place.
    """
    from xtuner.model.internvl import InternVL_V1_5

    original = InternVL_V1_5.__init__
    if getattr(original, "_book_sdpa", False):
        return True

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        counts = use_sdpa_attention(self.model)
        print(f"helpers.compat.use_sdpa_attention: patched {counts}", flush=True)

    __init__._book_sdpa = True  # type: ignore[attr-defined]
    InternVL_V1_5.__init__ = __init__  # type: ignore[method-assign]
    return True


def llava_on_cpu() -> bool:
    """Let XTuner 0.2.0's ``LLaVAModel`` be built on a CPU-only machine.

    ``LLaVAModel`` picks the LLM's dtype with
    ``get_torch_device().is_available() and get_torch_device().is_bf16_supported()``.
    Without a GPU its device module is ``torch.cpu``, which reports itself
    available but has no ``is_bf16_supported``, so building the model stops
    with ``AttributeError: module 'torch.cpu' has no attribute
    'is_bf16_supported'`` (training, ``pth_to_hf`` and every other tool that
    builds the model). We give ``torch.cpu`` the missing function
    (:func:`cpu_reports_bf16`): the dtype ``LLaVAModel`` chooses with it only
    matters for flash attention, which a CPU does not run. Returns True when
    the function is (now) there. Call it in XTuner's process only, on a CPU.
    """
    return cpu_reports_bf16()


def cpu_reports_bf16() -> bool:
    """Give ``torch.cpu`` the ``is_bf16_supported()`` that XTuner asks every device for, answering True.

    torch 2.14 has ``torch.cuda.is_bf16_supported`` but no CPU twin, and XTuner
    0.2.0 calls ``get_torch_device().is_bf16_supported()`` in two places the
    book meets on a CPU: ``LLaVAModel`` (the dtype it picks only matters for
    flash attention) and the DeepSpeed config's ``"auto"`` dtype, where it must
    be True: DeepSpeed's CPU accelerator refuses fp16 (``ValueError: Type fp16
    is not supported on your device``) and trains in bf16. One answer, one place.
    """
    import torch

    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda: True  # type: ignore[attr-defined]
    return True


def llava_dataset_processes() -> bool:
    """Make XTuner 0.2.0's ``LLaVADataset`` tokenize with as many processes as this machine has cores, at most.

    ``LLaVADataset`` passes no ``map_num_proc`` to ``process_hf_dataset``,
    whose default is 32: Hugging Face ``datasets`` then forks 32 processes for
    every ``map``/``filter`` pass, whatever the machine. On 2 cores the three
    passes over a 64-record file took about 30 s (a few ms of work). We
    replace the default by half the usable cores (at least 1: no extra
    processes). Returns True when the wrapper is in place. Call it in XTuner's
    process only.
    """
    import os

    import xtuner.dataset.llava as llava_dataset

    original = llava_dataset.process_hf_dataset
    if getattr(original, "_book_compat", False):
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def process_hf_dataset(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("map_num_proc", max(1, min(32, cores // 2)))
        return original(*args, **kwargs)

    process_hf_dataset._book_compat = True  # type: ignore[attr-defined]
    llava_dataset.process_hf_dataset = process_hf_dataset
    return True


def deepspeed_single_process() -> bool:
    """Give a DeepSpeed run that no launcher started the environment ``torchrun`` gives one process.

    ``xtuner train CONFIG --deepspeed NAME`` with one process starts no launcher,
    and DeepSpeed's ``init_distributed`` then looks for MPI when ``RANK``,
    ``WORLD_SIZE`` and friends are missing (``ModuleNotFoundError: No module named
    'mpi4py'``, seen on the CPU). We set ``RANK=0``, ``LOCAL_RANK=0``,
    ``WORLD_SIZE=1``, ``LOCAL_WORLD_SIZE=1`` and a free ``MASTER_PORT`` on
    127.0.0.1, where ``RANK`` is not set already. Returns True when it set them.
    """
    import os
    import socket

    if "RANK" in os.environ:
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    os.environ.update({**defaults, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    return True


def deepspeed_on_cpu() -> bool:
    """Let XTuner's ``--deepspeed`` run in one process on a CPU, on DeepSpeed's ``cpu`` accelerator.

    Measured with deepspeed 0.18.9 and XTuner 0.2.0 (``deepspeed_zero2``, plain
    LoRA on the tiny model): besides the launcher's environment
    (:func:`deepspeed_single_process`), two things stop it, and each fix is small.

    1. XTuner resolves the DeepSpeed config's ``"auto"`` dtype with
       ``torch.cpu.is_bf16_supported()``, which torch does not have
       (``AttributeError: module 'torch.cpu' has no attribute 'is_bf16_supported'``);
       :func:`cpu_reports_bf16` adds it, answering True: DeepSpeed's CPU
       accelerator refuses fp16 and trains in bf16.
    2. DeepSpeed's CPU communication backend compiles a shared-memory
       all-reduce op with g++ at start-up (over a minute on 2 cores); a single
       process has no one to all-reduce with, so we mark the op unavailable.

    Returns True when applied (DeepSpeed importable, no CUDA), else False.
    """
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None:
        return False
    cpu_reports_bf16()
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return True
