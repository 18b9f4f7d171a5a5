"""Convert an XTuner QLoRA checkpoint of the internvl2-2b preset and load the result on the GPU.

Trains a few iterations of the course recipe (to get a real ``iter_N.pth``),
converts it with helpers.convert (float32 merge on the CPU, checks included),
then loads the converted folder with helpers.infer's transformers backend on
the GPU and answers the course prompt. Writes a JSON result.

    python benchmarks/bench_convert.py --iters 8 --out benchmarks/results/convert-internvl2-2b-h100.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE_DATA_DIR, config, convert, env, infer, internvl, tiny, train


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/bench-convert")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    work = Path(args.workdir)
    t0 = time.perf_counter()
    model_dir = tiny.build("internvl2-2b", work / "model", overwrite=True, device="cuda" if cuda else "cpu")
    build_s = time.perf_counter() - t0
    recipe = config.Recipe(
        str(model_dir),
        str(SAMPLE_DATA_DIR / "train.json"),
        str(SAMPLE_DATA_DIR) + "/",
        max_iters=args.iters,
        save_steps=args.iters,
        log_interval=1,
    )
    recipe, overrides = config.fit_to_hardware(recipe, cuda=cuda, bnb_4bit=env.probe_bnb_4bit().ok)
    cfg = config.write(recipe, work / "config.py")
    result = train.train(cfg, work / "run", resume=False, progress=False)
    ckpt = result.checkpoints[-1]
    conv = convert.convert(ckpt, work / "merged", overwrite=True, adapter_dir=work / "adapter")
    t1 = time.perf_counter()
    pipe = infer.load(work / "merged", backend="transformers", device="cuda" if cuda else "cpu", dtype="bfloat16")
    load_s = time.perf_counter() - t1
    answer = pipe.ask(
        SAMPLE_DATA_DIR / "ex_images" / "chelsea.jpg", internvl.COURSE_PROMPT, infer.GenSettings(max_new_tokens=16)
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    out = {
        "benchmark": "convert",
        "preset": "internvl2-2b",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "build_seconds": round(build_s, 1),
        "train_iterations": result.steps,
        "train_seconds": round(result.seconds, 1),
        "overrides": [str(o) for o in overrides],
        "checkpoint": ckpt.name,
        "checkpoint_mib": round(conv.checkpoint_mb, 1),
        "output_mib": round(conv.output_mb, 1),
        "convert_seconds": round(conv.seconds, 1),
        "merged_vs_adapter_max_abs_diff": conv.merged_vs_adapter_max_abs_diff,
        "saved_vs_adapter_max_abs_diff": conv.saved_vs_adapter_max_abs_diff,
        "max_abs_logit": conv.max_abs_logit,
        "top1_agreement": conv.top1_agreement,
        "same_greedy_answer": conv.same_greedy_answer,
        "tolerance": conv.tolerance,
        "gpu_load_seconds": round(load_s, 1),
        "answer_tokens": answer.tokens,
        "answer_seconds": round(answer.seconds, 2),
        "gpu_peak_gib_after_load_and_answer": round(peak, 2) if peak else None,
        "note": "random weights at InternVL2-2B's real sizes: sizes and times are real, the answer is noise",
        "command": " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
