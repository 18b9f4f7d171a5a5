"""Run XTuner's own training tool (``xtuner.tools.train``) in this process, prepared for this machine.

``helpers.train`` starts this module as a subprocess instead of the ``xtuner
train`` command for these reasons, each a fix for a real failure:

1. ``xtuner train`` with one process starts ``python`` from ``PATH`` (maybe
   not this environment's) and drops the child's exit code, so a failed run
   looks successful. Here the tool runs in this interpreter and its exit code
   is ours.
2. XTuner's InternVL wrapper calls ``torch.distributed.get_rank()`` in every
   forward pass, which fails unless a process group exists. ``xtuner train``
   only gets one from DeepSpeed or torchrun; for a single process without
   DeepSpeed we create a group of one (gloo on CPU, NCCL on a GPU).
3. On a CPU-only machine, :func:`helpers.compat.allow_bnb_4bit_on_cpu` lets
   transformers 4.48 load the 4-bit model that bitsandbytes 0.50.2 can run.
4. :func:`helpers.compat.trust_own_checkpoints` lets mmengine resume from its
   own checkpoints under torch >= 2.6 (``weights_only`` loading).
5. :func:`helpers.compat.train_projector_in_float32` keeps the trained
   projector in float32, so the course's fp16 mixed precision works without
   DeepSpeed; on a CPU, :func:`helpers.compat.fast_4bit_compute_on_cpu` makes
   the 4-bit layers compute in float32 instead of (slow) float16.
6. :func:`helpers.compat.avoid_bnb_misaligned_4bit_gemm` keeps 4-bit layers
   with an odd number of outputs (the LM head: both vocabularies are odd) off
   a bitsandbytes 0.50.2 kernel that crashes on them on a GPU.

Usage (what helpers.train runs)::

    python -m helpers.xtuner_launch CONFIG --work-dir DIR [--resume CKPT] [--deepspeed NAME]
    torchrun --nproc_per_node N -m helpers.xtuner_launch CONFIG --work-dir DIR --launcher pytorch
"""

from __future__ import annotations

import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(argv: list[str]) -> None:
    """Apply the fixes above and create a one-process group when nothing else will."""
    import torch
    import torch.distributed as dist

    from .compat import avoid_bnb_misaligned_4bit_gemm, train_projector_in_float32, trust_own_checkpoints

    trust_own_checkpoints()
    avoid_bnb_misaligned_4bit_gemm()
    train_projector_in_float32()
    cuda = torch.cuda.is_available()
    if not cuda:
        from .compat import allow_bnb_4bit_on_cpu, fast_4bit_compute_on_cpu

        allow_bnb_4bit_on_cpu()
        fast_4bit_compute_on_cpu()
    launched = "--launcher" in argv and argv[argv.index("--launcher") + 1] != "none"
    if not launched and "--deepspeed" not in argv and not dist.is_initialized():
        # a fresh port every time: an inherited MASTER_PORT may be held by the parent process
        dist.init_process_group(
            "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prepare(argv)
    from xtuner.tools.train import main as xtuner_train

    sys.argv = ["xtuner-train", *argv]
    xtuner_train()


if __name__ == "__main__":
    main()
