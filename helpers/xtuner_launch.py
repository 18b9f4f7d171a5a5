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
8. Several processes on CPUs (torchrun, ``NPROC_PER_NODE=2``: the two-GPU code
   path, rehearsed in CI): mmengine 0.10.6 asks CUDA for the rank's device and
   wraps the model in DDP with a GPU id; we start gloo from torchrun's
   environment first and give DDP ``device_ids=None`` (:data:`CPU_DDP_OPTIONS`).
9. Speed levers the config asks for (:func:`levers`): ``book_attention = 'sdpa'``
   gives the official model code PyTorch's fused attention
   (:func:`helpers.compat.sdpa_attention_for_xtuner`), ``book_bnb_compute_dtype
   = 'bfloat16'`` makes the 4-bit layers compute in bfloat16 on a GPU
   (:func:`helpers.compat.bnb_compute_dtype`), ``book_lm_head = 'bf16'`` keeps
   the LM head out of 4-bit (:func:`helpers.compat.keep_lm_head_unquantized`),
   ``book_checkpoint`` / ``book_checkpoint_every`` choose the gradient
   checkpointing variant and how many layers (:func:`helpers.compat.checkpointing`),
   ``book_loss_logits = 'labelled'`` computes the loss from logits of the labelled
   tokens only (:func:`helpers.compat.labelled_logits_for_xtuner`).
10. :func:`helpers.compat.epoch_pause` takes out the 2-second sleep mmengine's
    loop makes at every pass over the data (``book_epoch_pause = 2`` in the
    config puts it back).
11. With ``--deepspeed`` and one process, :func:`helpers.compat.deepspeed_single_process`
    sets the environment ``torchrun`` would (else DeepSpeed looks for MPI); on
    a CPU, :func:`helpers.compat.deepspeed_on_cpu` fixes two more things.

Usage (what helpers.train runs)::

    python -m helpers.xtuner_launch CONFIG --work-dir DIR [--resume CKPT] [--deepspeed NAME]
    python -m helpers.xtuner_launch pth_to_hf CONFIG PTH OUT   # `xtuner convert pth_to_hf` (helpers.llava)
    torchrun --nproc_per_node N -m helpers.xtuner_launch CONFIG --work-dir DIR --launcher pytorch
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


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


def levers(config: str | None) -> dict[str, str]:
    """The book's speed settings in an XTuner config (``book_attention``, ``book_bnb_compute_dtype``).

    Configs written before these existed, or by hand, have none: XTuner's
    own behaviour (eager attention, float16 4-bit compute).

    >>> levers(None)["attention"], levers(None)["lm_head"]
    ('eager', '4bit')
    """
    import dataclasses

    from .config import LEVER_FIELDS, Recipe

    # XTuner's own behaviour is the Recipe's default for each lever (the course's)
    found = {f.name: str(f.default) for f in dataclasses.fields(Recipe) if f.name in LEVER_FIELDS}
    if config:
        from mmengine.config import Config

        cfg = Config.fromfile(config)
        for key in found:
            found[key] = str(cfg.get(f"book_{key}", found[key]))
    return found


def prepare(argv: list[str]) -> None:
    """Apply the fixes above and create a one-process group when nothing else will."""
    import torch
    import torch.distributed as dist

    from .compat import (
        avoid_bnb_misaligned_4bit_gemm,
        llava_dataset_processes,
        train_projector_in_float32,
        trust_own_checkpoints,
    )

    trust_own_checkpoints()
    llava_dataset_processes()
    avoid_bnb_misaligned_4bit_gemm()
    train_projector_in_float32()
    cuda = torch.cuda.is_available()
    config = argv[0] if argv and not argv[0].startswith("-") else None
    chosen = levers(config)
    if chosen["attention"] == "sdpa":
        from .compat import sdpa_attention_for_xtuner

        sdpa_attention_for_xtuner()
    if cuda and chosen["bnb_compute_dtype"] != "float16":
        from .compat import bnb_compute_dtype

        bnb_compute_dtype(chosen["bnb_compute_dtype"])
    if chosen["lm_head"] == "bf16":
        from .compat import keep_lm_head_unquantized

        keep_lm_head_unquantized()
    if chosen["checkpoint"] != "default" or chosen["checkpoint_every"] != "1":
        from .compat import checkpointing

        reentrant = {"default": None, "reentrant": True, "non-reentrant": False}[chosen["checkpoint"]]
        checkpointing(reentrant, int(chosen["checkpoint_every"]))
    if chosen["loss_logits"] == "labelled":
        from .compat import labelled_logits_for_xtuner

        labelled_logits_for_xtuner()
    from .compat import epoch_pause

    epoch_pause(float(chosen["epoch_pause"]))
    print(f"helpers.xtuner_launch: levers {chosen}", flush=True)
    if not cuda:
        from .compat import allow_bnb_4bit_on_cpu, fast_4bit_compute_on_cpu, float32_weights_on_cpu, llava_on_cpu

        allow_bnb_4bit_on_cpu()
        llava_on_cpu()
        fast_4bit_compute_on_cpu()
        float32_weights_on_cpu()
        if "OMP_NUM_THREADS" not in os.environ:  # a value set by hand wins
            threads = cpu_threads(config)
            torch.set_num_threads(threads)
            print(f"helpers.xtuner_launch: CPU training with {threads} PyTorch thread(s)", flush=True)
    launched = "--launcher" in argv and argv[argv.index("--launcher") + 1] != "none"
    if launched and not cuda and "--deepspeed" not in argv and not dist.is_initialized():
        # torchrun on CPUs (NPROC_PER_NODE=2 in CI): mmengine 0.10.6's init_dist("pytorch") calls
        # torch.cuda.set_device(local_rank) before anything else and fails without a GPU; the Runner
        # skips init_dist when a group exists, so we start gloo from torchrun's RANK/WORLD_SIZE/MASTER_*.
        dist.init_process_group("gloo", init_method="env://")

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


#: On CPUs under torchrun: mmengine wraps the model in DDP with ``device_ids=[LOCAL_RANK]``, which
#: DistributedDataParallel refuses for a CPU module; ``device_ids=None`` is how DDP runs on CPUs.
CPU_DDP_OPTIONS = [
    "--cfg-options",
    "model_wrapper_cfg.type=MMDistributedDataParallel",
    "model_wrapper_cfg.device_ids=None",
    "model_wrapper_cfg.broadcast_buffers=False",
]


def log_every_ranks_loss() -> None:
    """Each rank appends its own loss to ``work_dir/ranks/rank<R>.jsonl`` after every iteration.

    mmengine logs on rank 0 only, and only rank 0's micro-batch: with several
    processes, half (or more) of what the optimizer averages is never logged.
    This registers a hook on every :class:`mmengine.runner.Runner` before it
    trains; :func:`helpers.train.read_rank_losses` and
    :func:`helpers.train.merged_losses` read the files back (notebook 05).
    """
    import json

    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    if getattr(Runner.train, "_book_rank_log", False):
        return

    class RankLossHook(Hook):
        priority = "VERY_LOW"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            loss = (outputs or {}).get("loss")
            if loss is None:
                return
            folder = Path(runner.work_dir) / RANK_LOG_DIR
            folder.mkdir(exist_ok=True)
            with (folder / f"rank{runner.rank}.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": runner.iter + 1, "loss": float(loss)}) + "\n")

    original = Runner.train

    def train(self):
        self.register_hook(RankLossHook())
        return original(self)

    train._book_rank_log = True
    Runner.train = train


#: The folder, inside XTuner's work dir, of :func:`log_every_ranks_loss`'s files.
RANK_LOG_DIR = "ranks"


def convert_pth_to_hf(argv: list[str]) -> None:
    """Run ``xtuner convert pth_to_hf CONFIG PTH OUT [options]`` in this process, with the CPU fixes of :func:`prepare`.

    Converting builds the training model from the config, so it needs the
    same fixes as training (a LLaVA model cannot be built on a CPU without
    :func:`helpers.compat.llava_on_cpu`, nor its 4-bit LLM loaded without
    :func:`helpers.compat.allow_bnb_4bit_on_cpu`); no process group is needed.
    """
    import torch

    from .compat import trust_own_checkpoints

    trust_own_checkpoints()
    if not torch.cuda.is_available():
        from .compat import allow_bnb_4bit_on_cpu, llava_on_cpu

        allow_bnb_4bit_on_cpu()
        llava_on_cpu()
    from xtuner.tools.model_converters.pth_to_hf import main as xtuner_pth_to_hf

    sys.argv = ["pth_to_hf", *argv]
    xtuner_pth_to_hf()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "pth_to_hf":
        convert_pth_to_hf(argv[1:])
        return
    prepare(argv)
    import torch

    launched = "--launcher" in argv and argv[argv.index("--launcher") + 1] != "none"
    if launched:
        log_every_ranks_loss()
    if launched and not torch.cuda.is_available() and "--deepspeed" not in argv and "--cfg-options" not in argv:
        argv += CPU_DDP_OPTIONS
    from xtuner.tools.train import main as xtuner_train

    sys.argv = ["xtuner-train", *argv]
    xtuner_train()


if __name__ == "__main__":
    main()
