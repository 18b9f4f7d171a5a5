"""Small, documented compatibility fixes for the pinned stack. Each says why it exists.

They are applied explicitly (never on import) by the code that needs them:
:mod:`helpers.xtuner_launch` applies :func:`allow_bnb_4bit_on_cpu` in the
training process, so that real NF4 QLoRA runs on a CPU, and
:func:`avoid_bnb_misaligned_4bit_gemm` there on every machine.
"""

from __future__ import annotations


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
    import torch
    import transformers

    cls = transformers.BitsAndBytesConfig
    original = cls.__init__
    if getattr(original, "_book_compat", False):
        return True

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("bnb_4bit_compute_dtype") in (torch.float16, "float16"):
            kwargs["bnb_4bit_compute_dtype"] = torch.float32
        original(self, *args, **kwargs)

    __init__._book_compat = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]
    return True


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
       (``AttributeError: module 'torch.cpu' has no attribute 'is_bf16_supported'``).
       We add it, answering True: DeepSpeed's CPU accelerator refuses fp16
       (``ValueError: Type fp16 is not supported on your device``) and trains in bf16.
    2. DeepSpeed's CPU communication backend compiles a shared-memory
       all-reduce op with g++ at start-up (over a minute on 2 cores); a single
       process has no one to all-reduce with, so we mark the op unavailable.

    Returns True when applied (DeepSpeed importable, no CUDA), else False.
    """
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None:
        return False
    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda: True  # type: ignore[attr-defined]
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return True
