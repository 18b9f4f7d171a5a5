"""Benchmark XTuner's LLaVA recipe (the course's LLaVA notes) at the real sizes, with random weights.

Builds InternLM2-Chat-1.8B's and CLIP ViT-L/14-336's sizes with
``helpers.llava`` (random weights, the tiny tokenizer), writes the two stock
configs with the notes' edits (batch 1) and this machine's
(``llava.machine_edits``), trains the pretrain stage ``--iters`` iterations,
then the fine-tune stage (QLoRA r=512 on the 4-bit LLM, LoRA r=64 on the ViT)
from the pretrain's checkpoint, and reads XTuner's own log: seconds per
iteration (median after ``--skip``), samples/s and peak memory (mmengine's
``memory`` field, MiB of ``torch.cuda.max_memory_allocated``). One JSON per
stage: ``OUT/llava-pretrain-TAG.json`` and ``OUT/llava-finetune-TAG.json``.

    python benchmarks/bench_llava.py --out-dir $OUT --iters 6 --skip 2 --tag h200
    python benchmarks/bench_llava.py --preset tiny --out-dir /tmp/llava-bench --iters 3 --skip 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import llava, train
from helpers.env import package_version

PACKAGES = ("torch", "transformers", "xtuner", "mmengine", "peft", "bitsandbytes")
PRESETS = {"real": ("internlm2-chat-1.8b", "clip-vit-large-patch14-336"), "tiny": ("tiny", "tiny")}


def _stock(name: str) -> str:
    import importlib.util

    root = Path(importlib.util.find_spec("xtuner").submodule_search_locations[0]) / "configs" / "llava"
    return next(root.rglob(f"{name}.py")).read_text(encoding="utf-8")


def _result(stage: str, work: Path, seconds: float, args: argparse.Namespace, cuda: bool) -> dict:
    rows = [r for r in map(train.parse_log_line, (work / "train.log").read_text().splitlines()) if r]
    times = [r["time"] for r in rows if r["step"] > args.skip and "time" in r]
    per_iter = statistics.median(times) if times else None
    memory = max((r.get("memory", 0) for r in rows), default=0)
    return {
        "name": f"llava-{stage}",
        "stage": stage,
        "preset": args.preset,
        "iterations": len(rows),
        "skipped": args.skip,
        "batch_size": 1,
        "seconds_per_iteration_median": per_iter,
        "samples_per_second": 1 / per_iter if per_iter else None,
        "peak_gpu_memory_gib": memory / 1024 if cuda else None,
        "losses": [r.get("loss") for r in rows],
        "wall_seconds_with_loading": seconds,
        "gpu": _gpu() if cuda else None,
        "versions": {p: package_version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": "random weights at the real sizes; XTuner's stock LLaVA config with the notes' edits (batch 1) "
        "and the CUDA machine's edits (none on a GPU besides max_iters); seconds per iteration is mmengine's "
        "logged moving average",
    }


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="real", choices=sorted(PRESETS))
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--work", default="/tmp/llava-bench", type=Path)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--skip", type=int, default=2)
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
        cfg = work / f"{stage}.py"
        cfg.write_text(text, encoding="utf-8")
        if stage == "finetune":
            llava.check_finetune_config(cfg)
        run_dir = work / f"work_{stage}"
        t0 = time.perf_counter()
        shutil.rmtree(run_dir, ignore_errors=True)
        train.train(cfg, run_dir, resume=False, check_data=False, progress=False)
        result = _result(stage, run_dir, time.perf_counter() - t0, args, cuda)
        out = args.out_dir / f"llava-{stage}-{args.tag}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("name", "samples_per_second", "peak_gpu_memory_gib")}))
        pth = train.last_checkpoint(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
