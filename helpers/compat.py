"""Small, documented compatibility fixes for the pinned stack. Each says why it exists.

They are applied explicitly (never on import) by the code that needs them:
:mod:`helpers.xtuner_launch` applies :func:`allow_bnb_4bit_on_cpu` in the
training process, so that real NF4 QLoRA runs on a CPU.
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
