"""XTuner training with and without DeepSpeed, timed by whole optimizer steps (issue #17).

Writes the recipe with helpers.config (QLoRA: the first course's; LoRA: the
second course's FoodieQA recipe, no 4-bit), adds :class:`step_timer.StepTimerHook`
(``torch.cuda.synchronize()`` and the wall clock after each optimizer step),
trains ``--warmup + --steps`` optimizer steps with helpers.train (real XTuner,
``--deepspeed NAME`` when given, one process as ``NPROC_PER_NODE=1 xtuner train``
runs it), and writes samples/s over the timed steps and the peak memory.

    python benchmarks/bench_deepspeed.py --model /tmp/m2b --data /tmp/synth --recipe qlora \
        --deepspeed deepspeed_zero1 --out /tmp/train-deepspeed-qlora-zero1.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import config, data, env, train
from helpers.env import package_version

RECIPES = {
    # the first course (seed 000): 4-bit NF4 LLM, batch 4 x 4, max_length 6656
    "qlora": dict(quantization_llm=True, batch_size=4, accumulative_counts=4, max_length=6656),
    # the second course (FoodieQA): 16-bit LLM, batch 4 x 2, max_length 8192
    "lora": dict(quantization_llm=False, batch_size=4, accumulative_counts=2, max_length=8192),
}
PACKAGES = ("torch", "transformers", "xtuner", "mmengine", "peft", "bitsandbytes", "deepspeed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an InternVL2 directory (helpers.tiny --preset internvl2-2b)")
    ap.add_argument("--data", required=True, help="a CLoT folder (benchmarks/synthetic.py) or any accepted layout")
    ap.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    ap.add_argument("--deepspeed", default=None, help="e.g. deepspeed_zero1; omitted: no DeepSpeed")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="optimizer steps left out of the timing")
    ap.add_argument("--workdir", default="/tmp/bench-deepspeed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    data_dir = Path(args.data).resolve()
    ds = data.load_dataset(data_dir, split="train" if data.resolve_layout(data_dir).split_files else None)
    name = f"{args.recipe}-{args.deepspeed or 'none'}"
    work = Path(args.workdir) / name
    if work.exists():
        shutil.rmtree(work)
    settings = RECIPES[args.recipe]
    acc = settings["accumulative_counts"]
    iters = (args.warmup + args.steps) * acc
    recipe = config.Recipe(
        str(Path(args.model).resolve()),
        str(ds.source),
        str(ds.root) + "/",
        lora_r=128,
        lora_alpha=256,
        max_iters=iters,
        save_steps=iters,
        log_interval=1,
        **settings,
    )
    cuda = torch.cuda.is_available()
    recipe, overrides = config.fit_to_hardware(
        recipe, cuda=cuda, bnb_4bit=env.probe_bnb_4bit().ok, deepspeed=args.deepspeed
    )
    cfg = config.write(recipe, work / "config.py")
    steps_file = work / "steps.json"
    with cfg.open("a", encoding="utf-8") as f:
        f.write(
            "\nfrom step_timer import StepTimerHook  # benchmarks/step_timer.py: synchronised optimizer-step times\n"
            f"custom_hooks.append(dict(type=StepTimerHook, out={str(steps_file)!r}, accumulation={acc}))\n"
        )
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
    result = train.train(
        cfg, work / "run", resume=False, progress=False, deepspeed=args.deepspeed, env={"PYTHONPATH": pythonpath}
    )
    timing = json.loads(steps_file.read_text())
    timed = timing["seconds_per_optimizer_step"][args.warmup :]
    if not timed:
        raise SystemExit("no timed optimizer step: raise --steps")
    samples = recipe.batch_size * acc
    rows = train.read_scalars(work / "run")
    logged_mb = max((r.get("memory", 0) for r in rows), default=0)
    out = {
        "benchmark": "train-deepspeed",
        "name": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model_dir": recipe.model_path,
        "data": str(data_dir),
        "deepspeed": args.deepspeed,
        "command_shape": "NPROC_PER_NODE=1 xtuner train CONFIG"
        + (f" --deepspeed {args.deepspeed}" if args.deepspeed else ""),
        "versions": {p: package_version(p) for p in PACKAGES},
        "recipe": {
            k: getattr(recipe, k)
            for k in ("quantization_llm", "batch_size", "accumulative_counts", "max_length", "lora_r", "amp_dtype")
        },
        "overrides": [str(o) for o in overrides],
        "warmup_optimizer_steps": args.warmup,
        "timed_optimizer_steps": len(timed),
        "seconds_per_optimizer_step": timed,
        "seconds_per_optimizer_step_median": round(statistics.median(timed), 4),
        "samples_per_second": round(len(timed) * samples / sum(timed), 3),
        "peak_allocated_gib": timing["peak_allocated_gib"],
        "peak_memory_logged_gib": round(logged_mb / 1024, 2) if logged_mb else None,
        "loss_first": rows[0].get("loss") if rows else None,
        "loss_last": rows[-1].get("loss") if rows else None,
        "checkpoints": [str(p) for p in result.checkpoints],
        "wall_seconds": round(result.seconds, 1),
        "timing": "wall clock between torch.cuda.synchronize() calls after each optimizer step "
        "(benchmarks/step_timer.py), warm-up steps left out",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("name", "samples_per_second", "peak_allocated_gib", "loss_last")}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
