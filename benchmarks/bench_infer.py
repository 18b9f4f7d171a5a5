"""Benchmark helpers.infer on a GPU: first-token latency, decode tokens/s at batch 1 and 16, peak memory.

Reproduces ``benchmarks/results/inference-<backend>.json`` (see
``book/reference/inference-benchmarks.md``)::

    python -m helpers.tiny --preset internvl2-2b --out /tmp/m --device cuda
    python benchmarks/bench_infer.py --model /tmp/m --backend transformers \\
        --out benchmarks/results/inference-transformers.json
    python benchmarks/bench_infer.py --model /tmp/m --backend lmdeploy --engine pytorch \\
        --out benchmarks/results/inference-lmdeploy-pytorch.json

Every request asks the course's prompt about the same photo (7 tiles, 1,792
image tokens on InternVL2-2B) and generates exactly ``--max-new-tokens``
tokens (``ignore_eos``), greedy. Definitions, the same for both backends:

* first-token latency: batch 1, from the call to the first generated token
  (image tiling, vision encoder, prefill and one decode step);
* decode tokens/s at batch B: tokens generated after each request's first
  token, divided by the time from the last first token to the last token;
* end-to-end tokens/s at batch B: all generated tokens / wall time of the batch;
* peak memory: ``torch.cuda.max_memory_allocated`` in this process (LMDeploy's
  PyTorch engine runs in-process; its KV cache is reserved up front, see
  ``cache_max_entry_count``) and the device's used memory from NVML;
* image preprocessing, timed apart (``preprocess``): the book's tiling of the
  photo into normalised tiles (``helpers.tiling``, what the transformers
  backend runs on the CPU before the GPU sees anything), median of 10;
* the memory-bandwidth bound of decoding (``bandwidth_bound``): each decode
  step reads every LLM weight but the embedding table once, plus the KV cache
  of every sequence in the batch, so at batch B with a context of L tokens
  tokens/s <= B x bandwidth / (weight bytes + B x L x KV bytes per token);
  the bandwidth is the device's data-sheet figure (``--hbm-tb-s``).

A backend that cannot start still writes its JSON, with ``status: failed`` and
the exact error, and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from helpers import SAMPLE_DATA_DIR, infer, internvl
from helpers.env import package_version

IMAGE = SAMPLE_DATA_DIR / "ex_images" / "chelsea.jpg"
PROMPT = internvl.COURSE_PROMPT
PACKAGES = ("torch", "transformers", "tokenizers", "lmdeploy", "triton", "pydantic", "huggingface-hub")


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _nvml_used_gib() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return _gib(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def _device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"name": "cpu", "cuda": None}
    prop = torch.cuda.get_device_properties(0)
    return {
        "name": prop.name,
        "memory_gib": _gib(prop.total_memory),
        "capability": f"sm{prop.major}{prop.minor}",
        "cuda_runtime": torch.version.cuda,
        "driver_used_gib_before": _nvml_used_gib(),
    }


def _remote_code(model: Path) -> str:
    """'official' when the folder's InternLM2 code is the vendored official file, else 'book' (or 'unknown')."""
    from helpers import tiny

    try:
        here = (model / "modeling_internlm2.py").read_bytes()
    except OSError:
        return "unknown"
    return "official" if here == (tiny.OFFICIAL_CODE_DIR / "modeling_internlm2.py").read_bytes() else "book"


def _decode_rate(answers: list) -> float:
    tokens = sum(a.tokens - 1 for a in answers)
    span = max(a.latency_s for a in answers) - max(a.first_token_s or 0.0 for a in answers)
    return tokens / span if span > 0 else float("nan")


#: HBM bandwidth from the data sheets, TB/s (NVIDIA H100 SXM5 80 GB: 3.35; H200 141 GB: 4.8).
HBM_TB_S = {"NVIDIA H100 80GB HBM3": 3.35, "NVIDIA H200": 4.8}


def llm_bytes(cfg: dict, bytes_per_value: int = 2) -> dict[str, float]:
    """Bytes an InternLM2 decode step reads: the weights (less the embedding table) and the KV cache per token.

    >>> b = llm_bytes({"llm_config": {"vocab_size": 10, "hidden_size": 4, "intermediate_size": 8,
    ...     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}})
    >>> b["weights"], b["kv_per_token"]  # 2 bytes x ((4*4*2 + 4*4 + 3*4*8 + 2*4) + 10*4 + 4); 2 x 2 values
    (392.0, 8.0)
    """
    c = cfg["llm_config"]
    h, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    kv_heads, head_dim = c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"]
    per_layer = h * (heads + 2 * kv_heads) * head_dim + h * h + 3 * h * c["intermediate_size"] + 2 * h
    weights = layers * per_layer + c["vocab_size"] * h + h  # + the LM head and the final norm
    return {
        "weights": float(weights * bytes_per_value),
        "kv_per_token": float(layers * 2 * kv_heads * head_dim * bytes_per_value),
    }


def bandwidth_bound(bytes_read: dict[str, float], hbm_tb_s: float, batch: int, context: float) -> float:
    """Decode tokens/s that the HBM bandwidth allows at this batch and mean context length (:func:`llm_bytes`)."""
    return batch * hbm_tb_s * 1e12 / (bytes_read["weights"] + batch * context * bytes_read["kv_per_token"])


def _time_preprocess(pipe, repeats: int = 10) -> dict:  # type: ignore[no-untyped-def]
    from helpers.infer import load_image

    times, tiles = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tiles = len(pipe.tiling.pixel_values(load_image(IMAGE)))
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "tiles": tiles, "repeats": repeats, "where": "CPU"}


def run(args: argparse.Namespace) -> dict:
    import torch

    name = args.backend if args.backend == "transformers" else f"lmdeploy-{args.engine}"
    result: dict = {
        "benchmark": f"inference-{name}",
        "status": "started",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "device": _device(),
        "model": {"path": str(args.model)},
        "settings": {
            "backend": args.backend,
            "engine": args.engine if args.backend == "lmdeploy" else None,
            "max_new_tokens": args.max_new_tokens,
            "batch_sizes": [1, args.batch],
            "repeats": args.repeats,
            "greedy": True,
            "ignore_eos": True,
            "image": IMAGE.name,
            "prompt": PROMPT,
        },
    }
    try:
        cfg = json.loads((Path(args.model) / "config.json").read_text())
        readme = Path(args.model) / "README.md"
        result["model"].update(
            llm_layers=cfg["llm_config"]["num_hidden_layers"],
            llm_hidden=cfg["llm_config"]["hidden_size"],
            vit_layers=cfg["vision_config"]["num_hidden_layers"],
            what=readme.read_text().splitlines()[0].lstrip("# ") if readme.exists() else None,
            remote_code=_remote_code(Path(args.model)),
        )
        model_cfg = cfg
    except (OSError, KeyError, ValueError):
        model_cfg = None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    options = {}
    if args.backend == "lmdeploy":
        options = {
            "engine": args.engine,
            "cache_max_entry_count": args.cache_max_entry_count,
            "max_batch_size": args.batch,
        }
        for item in args.engine_option:
            key, _, value = item.partition("=")
            options[key] = json.loads(value) if value[:1] in "0123456789[{tf-n" else value
        result["settings"]["engine_options"] = {k: v for k, v in options.items() if k != "engine"}
    else:
        options = {"dtype": args.dtype}
    try:
        pipe = infer.load(args.model, args.backend, device=args.device, session_len=args.session_len, **options)
    except Exception as exc:
        cause = exc.__cause__ or exc
        result.update(
            status="failed",
            stage="load",
            load_s=round(time.perf_counter() - t0, 2),
            error=f"{type(exc).__name__}: {exc}",
            root_error=f"{type(cause).__name__}: {cause}",
            traceback=traceback.format_exception(type(cause), cause, cause.__traceback__)[-12:],
        )
        return result
    result["load_s"] = round(time.perf_counter() - t0, 2)
    result["pipeline"] = repr(pipe)
    if args.backend == "transformers":
        result["settings"]["dtype"] = str(pipe.dtype).replace("torch.", "")
        result["model"]["parameters"] = sum(p.numel() for p in pipe.model.parameters())
    else:
        result["settings"]["cache_max_entry_count"] = args.cache_max_entry_count
    cuda = torch.cuda.is_available()
    result["memory_after_load_gib"] = _gib(torch.cuda.memory_allocated()) if cuda else None
    gen = infer.GenSettings(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    try:
        t0 = time.perf_counter()
        warm = pipe.ask(IMAGE, PROMPT, infer.GenSettings(max_new_tokens=8, ignore_eos=True))
        result["warmup_s"] = round(time.perf_counter() - t0, 2)
        result["prompt_tokens"] = warm.prompt_tokens
        result["sample_answer"] = warm.text[:80]

        singles = [pipe.ask(IMAGE, PROMPT, gen) for _ in range(args.repeats)]
        result["batch_1"] = {
            "first_token_s": round(statistics.median(a.first_token_s or float("nan") for a in singles), 4),
            "decode_tokens_per_s": round(statistics.median(_decode_rate([a]) for a in singles), 1),
            "end_to_end_tokens_per_s": round(statistics.median(a.tokens / a.latency_s for a in singles), 1),
            "tokens": [a.tokens for a in singles],
            "seconds": [round(a.latency_s, 3) for a in singles],
        }
        pipe.ask_batch(
            [IMAGE] * args.batch,
            PROMPT,
            infer.GenSettings(max_new_tokens=8, ignore_eos=True),
            batch_size=args.batch,
            progress=False,
        )  # warm-up at this batch size, not measured
        runs = []
        for _ in range(max(1, args.repeats - 1)):
            t0 = time.perf_counter()
            answers = pipe.ask_batch([IMAGE] * args.batch, PROMPT, gen, batch_size=args.batch, progress=False)
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "wall_s": wall,
                    "decode": _decode_rate(answers),
                    "e2e": sum(a.tokens for a in answers) / wall,
                    "first": max(a.first_token_s or 0.0 for a in answers),
                    "tokens": sum(a.tokens for a in answers),
                }
            )
        result[f"batch_{args.batch}"] = {
            "decode_tokens_per_s": round(statistics.median(r["decode"] for r in runs), 1),
            "end_to_end_tokens_per_s": round(statistics.median(r["e2e"] for r in runs), 1),
            "last_first_token_s": round(statistics.median(r["first"] for r in runs), 4),
            "wall_s": [round(r["wall_s"], 3) for r in runs],
            "tokens": [r["tokens"] for r in runs],
        }
        result["preprocess"] = _time_preprocess(pipe)
        hbm = args.hbm_tb_s or HBM_TB_S.get(result["device"]["name"])
        if model_cfg and hbm and result.get("prompt_tokens"):
            context = result["prompt_tokens"] + args.max_new_tokens / 2  # the mean context while decoding
            bytes_read = llm_bytes(model_cfg)
            bounds = {b: bandwidth_bound(bytes_read, hbm, b, context) for b in (1, args.batch)}
            result["bandwidth_bound"] = {
                "hbm_tb_s": hbm,
                "bytes": bytes_read,
                "mean_context_tokens": context,
                **{f"batch_{b}_tokens_per_s": round(v, 1) for b, v in bounds.items()},
                **{
                    f"batch_{b}_share": round(result[f"batch_{b}"]["decode_tokens_per_s"] / v, 4)
                    for b, v in bounds.items()
                },
            }
        result["peak_memory_gib"] = _gib(torch.cuda.max_memory_allocated()) if cuda else None
        result["device_used_gib_nvml"] = _nvml_used_gib()
        result["status"] = "ok"
    except Exception as exc:
        result.update(
            status="failed",
            stage="generate",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc().splitlines()[-12:],
        )
    finally:
        pipe.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="InternVL2 folder (e.g. the internvl2-2b preset)")
    p.add_argument("--backend", required=True, choices=["transformers", "lmdeploy"])
    p.add_argument("--engine", default="pytorch", choices=list(infer.ENGINES))
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    p.add_argument("--session-len", type=int, default=infer.DEFAULT_SESSION_LEN)
    p.add_argument("--hbm-tb-s", type=float, default=None, help="HBM bandwidth, TB/s (default: HBM_TB_S by device)")
    p.add_argument(
        "--cache-max-entry-count",
        type=float,
        default=0.2,
        help="LMDeploy: share of free GPU memory reserved for the KV cache",
    )
    p.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra LMDeploy engine-config field, e.g. eager_mode=true (repeatable)",
    )
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {
        k: result.get(k)
        for k in (
            "status",
            "load_s",
            "batch_1",
            f"batch_{args.batch}",
            "preprocess",
            "bandwidth_bound",
            "peak_memory_gib",
            "error",
        )
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
