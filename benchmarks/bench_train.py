"""Benchmark the course's QLoRA recipe through real XTuner training.

Builds (or takes) an InternVL2 model directory, writes the course's XTuner
config with helpers.config (batch 4, accumulation 4, max_length 6656, LoRA
r=128/alpha=256 on a 4-bit NF4 LLM, fp16 AMP), trains a fixed number of
iterations on the bundled sample (or a folder of synthetic samples of one
length, ``synthetic.py``) with helpers.train, and reads XTuner's own log for
time per iteration, peak GPU memory and loss. Writes a JSON result with
samples/s, tokens/s and model FLOPs utilisation (formula in ``flops.py``).

    # GPU, InternVL2-2B's real sizes with random weights, on synthetic samples of 1,985 tokens
    # (benchmarks/gpu/train_single.sh runs every configuration of the results files):
    python benchmarks/bench_train.py --preset internvl2-2b --data /tmp/synth --iters 52 \
        --out /tmp/course.json
    # XTuner with bf16 mixed precision and fused attention, 2 samples per micro-batch x 8
    python benchmarks/bench_train.py --preset internvl2-2b --data /tmp/synth --amp bfloat16 --attn sdpa \
        --batch-size 2 --accumulation 8 --iters 32 --name tuned-16gb --out /tmp/tuned-16gb.json
    # CPU smoke run on the tiny model:
    python benchmarks/bench_train.py --preset tiny --iters 6 --batch-size 1 --accumulation 1 --out /tmp/t.json
    # the second course's LoRA (16-bit LLM, 4 x 2, max_length 8192) under DeepSpeed ZeRO-2 (issue #17)
    python benchmarks/bench_train.py --model /tmp/m2b --data /tmp/synth --no-4bit --batch-size 4 \
        --accumulation 2 --max-length 8192 --iters 26 --deepspeed deepspeed_zero2 --name lora-zero2 --out /tmp/l.json

Timing: helpers.timing.StepTimerHook (added to the config through
``Recipe.step_timing``) reads the wall clock after ``torch.cuda.synchronize()`` at
the end of every optimizer step, leaves the first 3 steps out and reports the
median of the rest (``--iters`` = 13 x accumulation gives 10 timed steps), the
spread and samples/s = samples per step / median step; mmengine's logged times
(a moving average over 10 iterations) are not used. The model directory is
built with the official InternVL2 code by default (``--remote-code``); ``--attn
sdpa`` and the other lever options become ``book_*`` lines of the config that
helpers.xtuner_launch applies (helpers.compat). Peak memory is the largest of
mmengine's per-iteration peaks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE_DATA_DIR, config, data, internvl, tiny, train
from helpers.env import package_version

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops

PACKAGES = ("torch", "transformers", "xtuner", "mmengine", "peft", "bitsandbytes", "tokenizers", "deepspeed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="internvl2-2b", choices=sorted(tiny.PRESETS))
    ap.add_argument("--model", help="an existing InternVL2 directory (skips building)")
    ap.add_argument("--workdir", default="/tmp/bench-train")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=6656)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--no-4bit", action="store_true")
    ap.add_argument("--workers", type=int, default=4, help="data loader processes (the course: 4)")
    ap.add_argument("--persistent-workers", action="store_true", help="keep them between epochs")
    ap.add_argument("--data", default=str(SAMPLE_DATA_DIR), help="a CLoT folder (e.g. from synthetic.py)")
    ap.add_argument(
        "--amp",
        default="float16",
        choices=["float16", "bfloat16", "none"],
        help="AmpOptimWrapper dtype (the course: float16), or none for full precision",
    )
    ap.add_argument(
        "--attn",
        default="default",
        choices=["default", "sdpa"],
        help="default: XTuner's choice (flash_attention_2 when flash-attn is installed, else eager); sdpa: "
        "PyTorch's fused attention (official code: helpers.compat.use_sdpa_attention; the book's code: "
        "INTERNVL_ATTN_FALLBACK=sdpa)",
    )
    ap.add_argument("--remote-code", default="official", choices=["official", "book"], help="model code built")
    ap.add_argument("--bnb-compute", default="float16", choices=["float16", "bfloat16"], help="4-bit compute dtype")
    ap.add_argument(
        "--lm-head", default="4bit", choices=["4bit", "bf16"], help="bf16: LM head unquantized and without LoRA"
    )
    ap.add_argument("--checkpoint", default="default", choices=["default", "reentrant", "non-reentrant"])
    ap.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every Nth LLM layer")
    ap.add_argument(
        "--loss-logits", default="all", choices=["all", "labelled"], help="labelled: logits of answer tokens only"
    )
    ap.add_argument(
        "--deepspeed",
        default=None,
        help="XTuner's --deepspeed NAME (e.g. deepspeed_zero1, the notes' command shape on one GPU); omitted: none",
    )
    ap.add_argument(
        "--epoch-pause",
        type=float,
        default=0.0,
        help="seconds mmengine's loop sleeps at each pass over the data (helpers.compat.epoch_pause); "
        "2 is mmengine's own, 0 the book's",
    )
    ap.add_argument(
        "--compile",
        choices=["none", "step", "layers"],
        default="none",
        help="step: mmengine's cfg.compile = True (torch.compile of the model's train_step); layers: "
        "torch.compile of each transformer layer (Recipe torch_compile='layers', helpers.compile_layers)",
    )
    ap.add_argument(
        "--profile-step",
        type=int,
        default=0,
        help="profile this optimizer step with torch.profiler (benchmarks/step_profiler.py); 0: none",
    )
    ap.add_argument("--name", default="seed-recipe")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", action="append", default=[], help="a sentence recorded with the result")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if args.attn == "sdpa":
        os.environ["INTERNVL_ATTN_FALLBACK"] = "sdpa"  # inherited by the training process
    work = Path(args.workdir)
    timing_file = (work / f"steps-{args.name}.json").resolve()
    timing_file.unlink(missing_ok=True)
    data_dir = Path(args.data).resolve()
    ds = data.load_dataset(data_dir, split="train" if data.resolve_layout(data_dir).split_files else None)
    model_dir = (
        Path(args.model).resolve()
        if args.model
        else tiny.build(
            args.preset, work / "model", overwrite=True, device="cuda" if cuda else "cpu", remote_code=args.remote_code
        )
    )
    recipe = config.Recipe(
        str(model_dir),
        str(ds.source),
        str(data_dir) + "/",
        max_length=args.max_length,
        batch_size=args.batch_size,
        accumulative_counts=args.accumulation,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        max_iters=args.iters,
        save_steps=args.iters,
        log_interval=1,
        quantization_llm=not args.no_4bit,
        dataloader_num_workers=args.workers,
        persistent_workers=args.persistent_workers,
        amp_dtype=None if args.amp == "none" else args.amp,
        attention="sdpa" if args.attn == "sdpa" else "eager",
        bnb_compute_dtype=args.bnb_compute,
        lm_head=args.lm_head,
        lora_targets=["wqkv", "wo", "w1", "w2", "w3"] if args.lm_head == "bf16" else None,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        loss_logits=args.loss_logits,
        epoch_pause=args.epoch_pause,
        torch_compile="layers" if args.compile == "layers" else "none",
        step_timing=str(timing_file),
    )
    from helpers import env

    recipe, overrides = config.fit_to_hardware(
        recipe, cuda=cuda, bnb_4bit=env.probe_bnb_4bit().ok, deepspeed=args.deepspeed
    )
    cfg = config.write(recipe, work / f"config-{args.name}.py")
    if args.compile == "step":
        with cfg.open("a", encoding="utf-8") as f:
            f.write("\ncompile = True  # mmengine's Runner: torch.compile(model.train_step) before the first step\n")
    profile_file = (work / f"profile-{args.name}.json").resolve()
    if args.profile_step:
        profile_file.unlink(missing_ok=True)
        with cfg.open("a", encoding="utf-8") as f:  # benchmarks/ is on the training process's PYTHONPATH
            f.write(
                "\nfrom step_profiler import StepProfilerHook\n"
                f"custom_hooks.append(dict(type=StepProfilerHook, out={str(profile_file)!r}, "
                f"step={args.profile_step}, accumulative_counts={args.accumulation}))\n"
            )
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))
    run_dir = work / f"run-{args.name}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: a finished one would "resume" and train nothing
    result = train.train(
        cfg, run_dir, resume=False, progress=False, deepspeed=args.deepspeed, env={"PYTHONPATH": pythonpath}
    )

    log_text = result.log.read_text()
    rows = [train.parse_log_line(line) for line in log_text.splitlines()]
    rows = [r for r in rows if r]
    memory_mb = max((r.get("memory", 0) for r in rows), default=0)
    if not timing_file.exists():
        raise SystemExit(f"the step timer wrote nothing ({timing_file}): see {result.log}")
    timing = json.loads(timing_file.read_text())
    if timing.get("timed_steps", 0) < 1:
        raise SystemExit(f"no optimizer step after {timing['warmup_steps']} warm-up steps: raise --iters")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    settings = internvl.TilingSettings.from_config(model_dir)
    counts = data.token_counts(ds, tok, settings)
    mean_tokens = statistics.mean(min(c["total"], args.max_length) for c in counts)
    mean_tiles = statistics.mean(c["tiles"] for c in counts)
    cost = flops.training_flops_per_sample(
        json.loads((model_dir / "config.json").read_text()),
        text_tokens=mean_tokens - mean_tiles * settings.num_image_token,
        tiles=mean_tiles,
        lora_r=args.lora_r,
    )
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    peak = flops.peak_bf16_flops(name)
    samples_per_s = timing["samples_per_second"]
    out = {
        "benchmark": "train",
        "name": args.name,
        "preset": args.preset if not args.model else None,
        "model_dir": str(model_dir),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runner": "XTuner (xtuner.tools.train via helpers.train)",
        "data": str(data_dir),
        "device": name,
        "gpu_uuid": flops.gpu_uuid(),
        "gpus": torch.cuda.device_count() if cuda else 0,
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
        "recipe": {
            k: getattr(recipe, k)
            for k in (
                "batch_size",
                "accumulative_counts",
                "max_length",
                "lora_r",
                "lora_alpha",
                "quantization_llm",
                "amp_dtype",
                "lr",
                "optimizer",
                "max_iters",
                "dataloader_num_workers",
                "persistent_workers",
            )
        },
        "remote_code": args.remote_code,
        "deepspeed": args.deepspeed,
        "compile": args.compile,
        "command_shape": "NPROC_PER_NODE=1 xtuner train CONFIG"
        + (f" --deepspeed {args.deepspeed}" if args.deepspeed else ""),
        "attention": args.attn,
        "bnb_compute_dtype": args.bnb_compute,
        "lm_head": args.lm_head,
        "checkpoint": args.checkpoint,
        "checkpoint_every": args.checkpoint_every,
        "loss_logits": args.loss_logits,
        "epoch_pause": args.epoch_pause,
        "overrides": [str(o) for o in overrides],
        "iterations": result.steps,
        "step_timing": {k: v for k, v in timing.items() if k not in ("losses", "data_wait_seconds")},
        "seconds_per_optimizer_step_median": timing["median_step_seconds"],
        # host seconds each iteration waited for its batch (helpers.timing; mmengine's data_time is smoothed)
        "data_wait_seconds": timing.get("data_wait_seconds", []),
        **flops.throughput(samples_per_s, mean_tokens, cost, peak),
        "peak_gpu_memory_gib": timing.get("peak_memory_allocated_gib"),
        "peak_gpu_memory_reserved_gib": timing.get("peak_memory_reserved_gib"),
        "peak_gpu_memory_logged_gib": round(memory_mb / 1024, 2) if memory_mb else None,
        # XTuner prints the model after building it; these are the module names shown as bnb Linear4bit
        # XTuner prints the model after building it: LoRA-wrapped layers whose frozen base is a
        # bitsandbytes Linear4bit, and LLM layers left in 16 bit (none expected with quantization_llm)
        "lora_layers_on_4bit_base": sorted(
            set(re.findall(r"\((\w+)\): lora\.Linear\(\n\s*\(base_layer\): Linear4bit\(", log_text))
        ),
        "llm_layers_not_4bit": sorted(
            set(re.findall(r"\((\w+)\): lora\.Linear\(\n\s*\(base_layer\): Linear\(", log_text))
        ),
        # what the launcher applied, as the training log says (levers and the SDPA patch's module counts)
        "launcher_lines": [
            line.strip()
            for line in log_text.splitlines()
            if line.startswith(("helpers.xtuner_launch: levers", "helpers.compat."))
        ],
        "profile": json.loads(profile_file.read_text()) if profile_file.exists() else None,
        "losses": timing.get("losses", [])[:30],
        "loss_first": rows[0].get("loss") if rows else None,
        "loss_last": rows[-1].get("loss") if rows else None,
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
