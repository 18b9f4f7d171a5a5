"""Synthetic CLoT-format samples of controlled length, for the training benchmarks.

Every sample has the same image size (so the same number of tiles, hence the
same number of image tokens) and a caption of exactly ``caption_tokens``
tokens, so every sample has the same token count and tokens/s is exact, not
an average. The images are the bundled photos resized; the captions are the
bundled captions joined and cut at a token boundary. The folder is an
ordinary CLoT folder (``ex_cn.json`` + ``ex_images/``) that XTuner and the
plain PyTorch loop both read.

    python benchmarks/synthetic.py --model DIR --out /tmp/synth --samples 64 --width 1344 --height 896
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE_DATA_DIR, data, internvl


def make(
    model_dir: str | Path,
    out: str | Path,
    samples: int = 64,
    width: int = 1344,
    height: int = 896,
    caption_tokens: int = 128,
) -> dict[str, Any]:
    """Write ``samples`` records to ``out`` and return what one sample costs, in tokens."""
    from PIL import Image
    from transformers import AutoTokenizer

    out = Path(out)
    (out / "ex_images").mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    source = data.load_dataset(SAMPLE_DATA_DIR)
    ids = tok("".join(r.caption for r in source), add_special_tokens=False).input_ids
    if len(ids) < caption_tokens + 1:
        raise ValueError(f"caption_tokens={caption_tokens}: the bundled captions have only {len(ids)} tokens")
    records = []
    for i in range(samples):
        record = source[i % len(source)]
        name = f"ex_images/synth_{i:04d}.jpg"
        Image.open(source.image_path(record)).convert("RGB").resize((width, height)).save(out / name, quality=90)
        start = (i * 37) % (len(ids) - caption_tokens)
        caption = tok.decode(ids[start : start + caption_tokens])
        records.append(
            {
                "id": f"synth_{i:04d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": internvl.COURSE_PROMPT},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    (out / "ex_cn.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    settings = internvl.TilingSettings.from_config(model_dir)
    counts = data.token_counts(data.load_dataset(out), tok, settings)
    totals = sorted({c["total"] for c in counts})
    tiles = counts[0]["tiles"]  # one image size, so the same for every sample
    return {
        "folder": str(out),
        "samples": samples,
        "image_size": [width, height],
        "tiles": tiles,
        "image_tokens": tiles * settings.num_image_token,
        "caption_tokens": caption_tokens,
        "tokens_per_sample": totals[-1],
        "tokens_per_sample_min": totals[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the InternVL2 directory whose tokenizer and tiling count")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--width", type=int, default=1344)
    ap.add_argument("--height", type=int, default=896)
    ap.add_argument("--caption-tokens", type=int, default=128)
    args = ap.parse_args()
    print(json.dumps(make(args.model, args.out, args.samples, args.width, args.height, args.caption_tokens), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
