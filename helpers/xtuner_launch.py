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
   the 4-bit layers compute in float32 instead of (slow) float16, and
   :func:`helpers.compat.float32_weights_on_cpu` loads the rest of the model in
   float32 instead of bfloat16 (slow on most CPUs).
6. On a CPU, PyTorch's own threads and the dataloader workers share the
   cores (:func:`cpu_threads`): by default PyTorch starts one thread per core,
   and on 2 cores with 1 worker process those 3 compete, so each parallel
   operation waits for a thread that is not running. A tiny-profile
   iteration then took several times the CPU time it takes with one thread.
7. :func:`helpers.compat.avoid_bnb_misaligned_4bit_gemm` keeps 4-bit layers
   with an odd number of outputs (the LM head: both vocabularies are odd) off
   a bitsandbytes 0.50.2 kernel that crashes on them on a GPU.
8. With ``--deepspeed`` and one process, :func:`helpers.compat.deepspeed_single_process`
   sets the environment ``torchrun`` would (else DeepSpeed looks for MPI); on
   a CPU, :func:`helpers.compat.deepspeed_on_cpu` fixes two more things.

Usage (what helpers.train runs)::

    python -m helpers.xtuner_launch CONFIG --work-dir DIR [--resume CKPT] [--deepspeed NAME]
    torchrun --nproc_per_node N -m helpers.xtuner_launch CONFIG --work-dir DIR --launcher pytorch
"""

from __future__ import annotations

import os
import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_threads(config: str | None, cores: int | None = None) -> int:
    """PyTorch threads for CPU training: the cores the dataloader workers leave free, at least 1.

    ``config`` is the XTuner config (its ``train_dataloader.num_workers``
    is read; none: no workers), ``cores`` those this process may use.

    >>> cpu_threads(None, cores=2)
    2
    """
    workers = 0
    if config:
        from mmengine.config import Config

        workers = int(Config.fromfile(config).get("train_dataloader", {}).get("num_workers", 0) or 0)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - workers)


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
        from .compat import allow_bnb_4bit_on_cpu, fast_4bit_compute_on_cpu, float32_weights_on_cpu

        allow_bnb_4bit_on_cpu()
        fast_4bit_compute_on_cpu()
        float32_weights_on_cpu()
        if "OMP_NUM_THREADS" not in os.environ:  # a value set by hand wins
            config = argv[0] if argv and not argv[0].startswith("-") else None
            threads = cpu_threads(config)
            torch.set_num_threads(threads)
            print(f"helpers.xtuner_launch: CPU training with {threads} PyTorch thread(s)", flush=True)
    launched = "--launcher" in argv and argv[argv.index("--launcher") + 1] != "none"
    if "--deepspeed" in argv:
        from .compat import deepspeed_on_cpu, deepspeed_single_process

        if not launched:
            deepspeed_single_process()
        if not cuda:
            deepspeed_on_cpu()
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
