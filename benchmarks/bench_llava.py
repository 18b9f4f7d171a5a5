"""Benchmark XTuner's LLaVA recipe (the course's LLaVA notes) at the real sizes, with random weights.

Builds InternLM2-Chat-1.8B's and CLIP ViT-L/14-336's sizes with
``helpers.llava`` (random weights, the tiny tokenizer), writes the two stock
configs with the notes' edits (batch 1) and this machine's
(``llava.machine_edits``), trains the pretrain stage ``--iters`` iterations,
then the fine-tune stage (QLoRA r=512 on the 4-bit LLM, LoRA r=64 on the ViT)
from the pretrain's checkpoint. On a GPU both stages run as the notes run
them, ``--deepspeed deepspeed_zero2``: DeepSpeed's engine casts the whole
model to one 16-bit type (bf16 on an H200), while without it the fp32 projector feeds float32 image
features to the float16 LLM and XTuner's ``EvaluateChatHook`` fails before the
first step (``expected mat1 and mat2 to have the same dtype``, seen on the
H200). Timing: ``helpers.timing.StepTimerHook`` (wall clock after
``torch.cuda.synchronize()`` per optimizer step, ``--skip`` warm-up steps left
out), never mmengine's logged ``time``; peak memory is the hook's
``torch.cuda.max_memory_allocated``. One JSON per stage:
``OUT/llava-pretrain-TAG.json`` and ``OUT/llava-finetune-TAG.json``.

    python benchmarks/bench_llava.py --out-dir $OUT --iters 13 --skip 3 --tag h200
    python benchmarks/bench_llava.py --preset tiny --out-dir /tmp/llava-bench --iters 3 --skip 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import llava, train
from helpers.env import package_version

PACKAGES = ("torch", "transformers", "xtuner", "mmengine", "peft", "bitsandbytes")
#: appended to each stage's config: the step timer next to XTuner's own hooks
TIMER = """
from helpers.timing import StepTimerHook
custom_hooks = custom_hooks + [dict(type=StepTimerHook, out={out!r}, batch_size=batch_size,
                                    accumulative_counts=accumulative_counts, warmup_steps={skip})]
"""
PRESETS = {"real": ("internlm2-chat-1.8b", "clip-vit-large-patch14-336"), "tiny": ("tiny", "tiny")}


def _stock(name: str) -> str:
    import importlib.util

    root = Path(importlib.util.find_spec("xtuner").submodule_search_locations[0]) / "configs" / "llava"
    return next(root.rglob(f"{name}.py")).read_text(encoding="utf-8")


def _result(stage: str, work: Path, timing: Path, seconds: float, args: argparse.Namespace, cuda: bool) -> dict:
    rows = [r for r in map(train.parse_log_line, (work / "train.log").read_text().splitlines()) if r]
    steps = json.loads(timing.read_text()) if timing.exists() else {}
    return {
        "name": f"llava-{stage}",
        "stage": stage,
        "preset": args.preset,
        "iterations": len(rows),
        "batch_size": 1,
        "deepspeed": "deepspeed_zero2" if cuda else None,
        "step_timing": {k: v for k, v in steps.items() if k not in ("losses",)},
        "samples_per_second": steps.get("samples_per_second"),
        "peak_gpu_memory_gib": steps.get("peak_memory_allocated_gib"),
        "losses": [r.get("loss") for r in rows],
        "wall_seconds_with_loading": seconds,
        "gpu": _gpu() if cuda else None,
        "versions": {p: package_version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": "random weights at the real sizes; XTuner's stock LLaVA config with the notes' edits (batch 1) "
        "and the machine's edits (none on a GPU besides max_iters), --deepspeed deepspeed_zero2 on a GPU as in the "
        "notes; whole optimizer steps timed by helpers.timing.StepTimerHook after the warm-up steps",
    }


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="real", choices=sorted(PRESETS))
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--work", default="/tmp/llava-bench", type=Path)
    ap.add_argument("--iters", type=int, default=13)
    ap.add_argument("--skip", type=int, default=3, help="warm-up optimizer steps left out")
    ap.add_argument("--tag", default="gpu")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    work = args.work
    llm_preset, vit_preset = PRESETS[args.preset]
    llm, vit = work / f"llm-{llm_preset}", work / f"vit-{vit_preset}"
    device = "cuda" if cuda else "cpu"
    if not (llm / "config.json").exists():
        llava.build_llm(llm, llm_preset, overwrite=True, device=device)
    if not (vit / "config.json").exists():
        llava.build_vision(vit, vit_preset, overwrite=True, device=device)
    data = llava.write_datasets(work / "data", repeats=4, caption_repeats=4)
    paths = dict(llm=llm, visual_encoder=vit, image_folder=data.image_folder,
                 evaluation_image=data.image_folder / "ex_images" / "chelsea.jpg")  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pth = None
    for stage, name, data_path in (
        ("pretrain", llava.PRETRAIN_CONFIG, data.captions),
        ("finetune", llava.FINETUNE_CONFIG, data.qa_train),
    ):
        edits = llava.course_edits(stage, data_path=data_path, pretrained_pth=pth, **paths)
        _, text = llava.edit_stock(_stock(name), edits, llava.machine_edits(stage, cuda=cuda, max_iters=args.iters))
        timing = (work / f"steps-{stage}.json").resolve()
        timing.unlink(missing_ok=True)
        text += TIMER.format(out=str(timing), skip=args.skip)
        cfg = work / f"{stage}.py"
        cfg.write_text(text, encoding="utf-8")
        if stage == "finetune":
            llava.check_finetune_config(cfg)
        run_dir = work / f"work_{stage}"
        t0 = time.perf_counter()
        shutil.rmtree(run_dir, ignore_errors=True)
        ds = "deepspeed_zero2" if cuda else None  # the notes' command (the module's text says why on a GPU)
        train.train(cfg, run_dir, resume=False, check_data=False, progress=False, deepspeed=ds)
        result = _result(stage, run_dir, timing, time.perf_counter() - t0, args, cuda)
        out = args.out_dir / f"llava-{stage}-{args.tag}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("name", "samples_per_second", "peak_gpu_memory_gib")}))
        pth = train.last_checkpoint(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
