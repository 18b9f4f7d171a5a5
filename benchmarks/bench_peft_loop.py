"""The QLoRA baseline a learner might write: transformers + peft + bitsandbytes and a plain loop.

No XTuner, no mmengine: load the model 4-bit with ``BitsAndBytesConfig``,
``prepare_model_for_kbit_training``, wrap the language model with
``get_peft_model`` (LoRA on every linear layer, like XTuner), train the
projector ``mlp1`` too, and run ``AdamW`` under ``torch.autocast`` with
gradient accumulation. The samples are encoded exactly as XTuner's InternVL
dataset encodes them (:func:`helpers.data.training_ids`) and tiled with
:mod:`helpers.tiling`, so the loss is the same quantity as in ``xtuner train``.

    # GPU, InternVL2-2B's real sizes (random weights), synthetic samples of controlled length:
    python benchmarks/bench_peft_loop.py --preset internvl2-2b --data /tmp/synth --steps 20 \\
        --out benchmarks/results/train-peft-loop-h100.json
    # CPU, the tiny model, the bundled sample:
    python benchmarks/bench_peft_loop.py --preset tiny --steps 8 --batch-size 2 --accumulation 1 --out /tmp/p.json

Figures are per optimizer step after ``--skip`` warm-up steps: samples/s,
tokens/s (real tokens, padding excluded), peak GPU memory
(``torch.cuda.max_memory_allocated``), and model FLOPs utilisation from
:func:`flops.training_flops_per_sample` (the formula is written there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops
import step_profiler

from helpers import SAMPLE_DATA_DIR, data, tiny
from helpers.env import package_version
from helpers.internvl import IMG_CONTEXT, TilingSettings

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "tokenizers")


def load_samples(folder: Path, tokenizer, settings: TilingSettings, max_length: int) -> list[dict]:
    """Every record as tensors: pixel values (tiles), input_ids, labels."""
    import torch
    from PIL import Image

    layout = data.resolve_layout(folder)
    ds = data.load_dataset(folder, split="train" if layout.split_files else None)
    samples = []
    for record in ds:
        pixels = settings.pixel_values(Image.open(ds.image_path(record)))
        ids, labels = data.training_ids(record, tokenizer, len(pixels) * settings.num_image_token)
        samples.append(
            {
                "pixel_values": pixels,
                "input_ids": torch.tensor(ids[:max_length]),
                "labels": torch.tensor(labels[:max_length]),
            }
        )
    return samples


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; the tiles of all its images are stacked, as InternVL's forward expects."""
    import torch

    n = max(len(s["input_ids"]) for s in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, s in enumerate(batch):
        k = len(s["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = s["input_ids"], s["labels"], 1
    pixels = torch.cat([s["pixel_values"] for s in batch])
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": pixels,
        "image_flags": torch.ones(len(pixels), dtype=torch.long),
        "tokens": int(mask.sum()),
    }


def build(model_dir: Path, device: str, four_bit: bool, lora_r: int, attn: str, checkpointing: bool):
    """Load the model the way the Hugging Face docs teach QLoRA, and wrap its LLM with LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModel, BitsAndBytesConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    # the official modeling_internlm2.py knows eager and flash_attention_2 only: SDPA is patched in below
    official = "INTERNLM2_ATTENTION_CLASSES" in (model_dir / "modeling_internlm2.py").read_text()
    config.llm_config.attn_implementation = "eager" if official and attn == "sdpa" else attn
    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=["vision_model", "mlp1"],
        )
        if four_bit
        else None
    )
    if four_bit and device == "cpu":
        from helpers.compat import allow_bnb_4bit_on_cpu

        allow_bnb_4bit_on_cpu()
    model = AutoModel.from_pretrained(
        model_dir,
        config=config,
        torch_dtype=torch.bfloat16,
        quantization_config=quant,
        trust_remote_code=True,
        device_map={"": device} if four_bit else None,
    )
    model.to(device)
    if official and attn == "sdpa":
        from helpers.compat import use_sdpa_attention

        print(f"helpers.compat.use_sdpa_attention: patched {use_sdpa_attention(model)}", flush=True)
    model.vision_model.requires_grad_(False)
    llm = model.language_model
    if four_bit:
        # casts norms and embeddings to float32; it would also turn on gradient checkpointing, but only for a
        # model marked as loaded in 4 bit, and that is the InternVL wrapper, not its language model
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=checkpointing)
    if checkpointing:  # so we turn it on ourselves (forgetting this costs ~50 GB at batch 4 x 2,000 tokens)
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        llm.enable_input_require_grads()
    targets = sorted(
        {n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if type(m).__name__ in ("Linear", "Linear4bit")}
    )
    model.language_model = get_peft_model(
        llm,
        LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM"),
    )
    model.mlp1.float().requires_grad_(True)  # trained in float32, autocast runs it in bf16
    return model, targets


def one_step(model, opt, trainable, samples, micro, seen: int, tok, device: str, args) -> tuple[float, int, int]:
    """One optimizer step: ``args.accumulation`` micro-batches under bf16 autocast, clipping, AdamW.

    Returns the step's loss, its real tokens and the updated count of micro-batches seen.
    """
    import torch

    step_loss, step_tokens = 0.0, 0
    for _ in range(args.accumulation):
        batch = collate([samples[i] for i in micro[seen % len(micro)]], tok.pad_token_id or 0)
        seen += 1
        step_tokens += batch.pop("tokens")
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch).loss / args.accumulation
        loss.backward()
        step_loss += loss.item()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return step_loss, step_tokens, seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="internvl2-2b", choices=sorted(tiny.PRESETS))
    ap.add_argument("--model", help="an existing InternVL2 directory (skips building)")
    ap.add_argument("--data", default=str(SAMPLE_DATA_DIR), help="a CLoT folder (e.g. from synthetic.py)")
    ap.add_argument("--workdir", default="/tmp/bench-peft")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps")
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=6656)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--no-4bit", action="store_true")
    ap.add_argument(
        "--attn",
        default="eager",
        choices=["eager", "sdpa"],
        help="InternLM2 attention (the official remote code knows eager and flash_attention_2)",
    )
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument(
        "--profile-step", type=int, default=0, help="profile this optimizer step (benchmarks/step_profiler.py); 0: none"
    )
    ap.add_argument("--name", default="peft-loop")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    work = Path(args.workdir)
    model_dir = (
        Path(args.model).resolve()
        if args.model
        else tiny.build(args.preset, work / "model", overwrite=True, device=device)
    )
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    settings = TilingSettings.from_config(model_dir)
    samples = load_samples(Path(args.data), tok, settings, args.max_length)
    model, targets = build(model_dir, device, not args.no_4bit, args.lora_r, args.attn, not args.no_checkpointing)
    model.img_context_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.05)
    # like XTuner's LengthGroupedSampler: batches of similar length, shuffled
    order = torch.randperm(len(samples)).tolist()
    micro = [order[i : i + args.batch_size] for i in range(0, len(order) - args.batch_size + 1, args.batch_size)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses, tokens, seen = [], [], [], 0
    t_all = time.perf_counter()
    profile_file = Path(args.out).with_name(Path(args.out).stem + "-profile.json")
    for step in tqdm(range(args.steps), desc="optimizer steps"):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        profiling = step_profiler.profiled_step(profile_file) if step == args.profile_step > 0 else nullcontext()
        with profiling:
            step_loss, step_tokens, seen = one_step(model, opt, trainable, samples, micro, seen, tok, device, args)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(step_loss)
        tokens.append(step_tokens)
    wall = time.perf_counter() - t_all

    sec = statistics.median(times[args.skip :] or times)
    per_step = args.batch_size * args.accumulation
    mean_tokens = statistics.mean(tokens) / per_step
    samples_per_s = per_step / sec
    mean_tiles = statistics.mean(len(s["pixel_values"]) for s in samples)
    cost = flops.training_flops_per_sample(
        json.loads((model_dir / "config.json").read_text()),
        text_tokens=mean_tokens - mean_tiles * settings.num_image_token,
        tiles=mean_tiles,
        lora_r=args.lora_r,
        checkpointing=not args.no_checkpointing,
    )
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    peak = flops.peak_bf16_flops(name)
    out = {
        "benchmark": "train",
        "name": args.name,
        "runner": "plain transformers + peft + bitsandbytes loop",
        "preset": None if args.model else args.preset,
        "data": args.data,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": name,
        "gpu_uuid": flops.gpu_uuid(),
        "gpus": 1 if cuda else 0,
        "versions": {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}},
        "recipe": {
            "batch_size": args.batch_size,
            "accumulative_counts": args.accumulation,
            "max_length": args.max_length,
            "lora_r": args.lora_r,
            "lora_alpha": 2 * args.lora_r,
            "quantization_llm": not args.no_4bit,
            "autocast": "bfloat16",
            "attn": args.attn,
            "gradient_checkpointing": not args.no_checkpointing,
            "lr": args.lr,
            "optimizer": "AdamW",
            "lora_targets": targets,
        },
        "optimizer_steps": args.steps,
        "seconds_per_step_median": round(sec, 4),
        **flops.throughput(samples_per_s, mean_tokens, cost, peak),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "profile": json.loads(profile_file.read_text()) if profile_file.exists() else None,
        "losses": [round(x, 4) for x in losses],
        "wall_seconds": round(wall, 1),
        "command": " ".join(sys.argv),
        "notes": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "losses"}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
