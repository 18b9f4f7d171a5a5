"""Do LMDeploy and transformers answer alike on one model folder, given the same system prompt? (GPU)

Users report the two engines answering differently (InternVL#1208, lmdeploy#2705). This loads one
model folder behind both backends of :mod:`helpers.infer` in the LMDeploy serving environment, asks
the course's question about the same images with greedy decoding and the same system prompt, and
compares the answers token by token (the model's own tokenizer).

    python benchmarks/agree.py --model _build/outputs-gpu/merged --split _build/outputs-gpu/splits/eval.json \
        --records 8 --out benchmarks/results/agree-lmdeploy-transformers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import data, infer, internvl
from helpers.env import package_version


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--split", required=True, type=Path, help="a split file written by data.prepare_splits")
    p.add_argument("--records", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoTokenizer

    ds = data.load_dataset(args.split)
    records = list(ds)[: args.records]
    images = [str(ds.image_path(r)) for r in records]
    gen = infer.GenSettings(max_new_tokens=args.max_new_tokens)  # greedy
    answers: dict[str, list[str]] = {}
    for backend in ("lmdeploy", "transformers"):
        # the same system message on both: InternVL2's own (the converted model's chat template)
        with infer.load(args.model, backend=backend, device="cuda", system=internvl.INTERNVL_SYSTEM) as pipe:
            answers[backend] = [pipe.ask(img, internvl.COURSE_PROMPT, gen).text for img in images]
        torch.cuda.empty_cache()
    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    rows = []
    for rec, a, b in zip(records, answers["lmdeploy"], answers["transformers"]):
        ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        rows.append(
            {
                "id": rec.id,
                "identical": a == b,
                "common_prefix_tokens": common_prefix(ta, tb),
                "tokens": [len(ta), len(tb)],
                "lmdeploy": a,
                "transformers": b,
            }
        )
    result = {
        "name": "agree-lmdeploy-transformers",
        "model": str(args.model),
        "records": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "mean_common_prefix_tokens": round(sum(r["common_prefix_tokens"] for r in rows) / max(len(rows), 1), 2),
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "system": "helpers.internvl.INTERNVL_SYSTEM on both",
        "machine": torch.cuda.get_device_name(0),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lmdeploy": package_version("lmdeploy"),
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    prefix = result["mean_common_prefix_tokens"]
    print(f"{result['identical']}/{len(rows)} answers identical; mean common prefix {prefix} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
