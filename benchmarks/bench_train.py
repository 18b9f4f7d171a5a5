"""Benchmark the course's QLoRA recipe through real XTuner training.

Builds (or takes) an InternVL2 model directory, writes the course's XTuner
config with helpers.config (batch 4, accumulation 4, max_length 6656, LoRA
r=128/alpha=256 on a 4-bit NF4 LLM, fp16 AMP), trains a fixed number of
iterations on the bundled sample with helpers.train, and reads XTuner's own
log for time per iteration, peak GPU memory and loss. Writes a JSON result.

    # GPU, InternVL2-2B's real sizes with random weights (what the results files hold):
    python benchmarks/bench_train.py --preset internvl2-2b --iters 40 \
        --out benchmarks/results/train-seed-recipe-h100.json
    # CPU smoke run on the tiny model:
    python benchmarks/bench_train.py --preset tiny --iters 6 --batch-size 1 --accumulation 1 --out /tmp/t.json

Samples/s counts micro-batch samples (batch_size per iteration); tokens/s uses
the bundled sample's mean tokens per sample (text + image tokens under the
model's tiling). The first ``--skip`` iterations (warm-up) are left out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE_DATA_DIR, config, data, tiny, train  # noqa: E402
from helpers.env import package_version  # noqa: E402


PACKAGES = ("torch", "transformers", "xtuner", "mmengine", "peft", "bitsandbytes", "tokenizers")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="internvl2-2b", choices=sorted(tiny.PRESETS))
    ap.add_argument("--model", help="an existing InternVL2 directory (skips building)")
    ap.add_argument("--workdir", default="/tmp/bench-train")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="warm-up iterations left out of the timing")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=6656)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--no-4bit", action="store_true")
    ap.add_argument("--name", default="seed-recipe")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", action="append", default=[], help="a sentence recorded with the result")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    work = Path(args.workdir)
    model_dir = Path(args.model) if args.model else tiny.build(args.preset, work / "model", overwrite=True,
                                                              device="cuda" if cuda else "cpu")
    recipe = config.Recipe(
        str(model_dir), str(SAMPLE_DATA_DIR / "train.json"), str(SAMPLE_DATA_DIR) + "/",
        max_length=args.max_length, batch_size=args.batch_size, accumulative_counts=args.accumulation,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_iters=args.iters, save_steps=args.iters,
        log_interval=1, quantization_llm=not args.no_4bit, dataloader_num_workers=4,
    )
    from helpers import env

    recipe, overrides = config.fit_to_hardware(recipe, cuda=cuda, bnb_4bit=env.probe_bnb_4bit().ok)
    cfg = config.write(recipe, work / "config.py")
    run_dir = work / "run"
    result = train.train(cfg, run_dir, resume=False if not train.list_checkpoints(run_dir) else "auto",
                         progress=False)

    rows = [train.parse_log_line(line) for line in result.log.read_text().splitlines()]
    rows = [r for r in rows if r]
    timed = [r["time"] for r in rows if r["step"] > args.skip and "time" in r]
    sec_per_iter = statistics.median(timed)
    memory_mb = max((r.get("memory", 0) for r in rows), default=0)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    counts = data.token_counts(data.load_dataset(SAMPLE_DATA_DIR, split="train"), tok,
                               **tiny.image_settings(model_dir))
    mean_tokens = statistics.mean(min(c["total"], args.max_length) for c in counts)
    log_text = result.log.read_text()
    samples_per_s = args.batch_size / sec_per_iter
    out = {
        "benchmark": "train", "name": args.name, "preset": args.preset if not args.model else None,
        "model_dir": str(model_dir), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
        "recipe": {k: getattr(recipe, k) for k in ("batch_size", "accumulative_counts", "max_length", "lora_r",
                                                    "lora_alpha", "quantization_llm", "amp_dtype", "lr",
                                                    "optimizer", "max_iters")},
        "overrides": [str(o) for o in overrides],
        "iterations": result.steps, "optimizer_steps": result.steps // args.accumulation,
        "seconds_per_iteration_median": round(sec_per_iter, 4),
        "samples_per_second": round(samples_per_s, 3),
        "mean_tokens_per_sample": round(mean_tokens, 1),
        "tokens_per_second": round(samples_per_s * mean_tokens, 1),
        "peak_gpu_memory_gib": round(memory_mb / 1024, 2) if memory_mb else None,
        # XTuner prints the model after building it; these are the module names shown as bnb Linear4bit
        # XTuner prints the model after building it: LoRA-wrapped layers whose frozen base is a
        # bitsandbytes Linear4bit, and LLM layers left in 16 bit (none expected with quantization_llm)
        "lora_layers_on_4bit_base": sorted(set(re.findall(
            r"\((\w+)\): lora\.Linear\(\n\s*\(base_layer\): Linear4bit\(", log_text))),
        "llm_layers_not_4bit": sorted(set(re.findall(
            r"\((\w+)\): lora\.Linear\(\n\s*\(base_layer\): Linear\(", log_text))),
        "loss_first": rows[0].get("loss"), "loss_last": rows[-1].get("loss"),
        "wall_seconds": round(result.seconds, 1),
        "command": " ".join(sys.argv),
        "notes": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
