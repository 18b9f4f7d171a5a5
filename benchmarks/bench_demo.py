"""Time the web demo (``helpers.demo``) as its users meet it: N browser sessions asking at once.

Starts ``python -m helpers.demo`` in the background (base and fine-tuned model side by side), then
N API clients (``gradio_client``, one session each) upload a held-out photo and ask the course's
question at the same moment. For every session it records what the page shows under each answer
(time to first token and tokens/s, measured by ``helpers.infer`` inside the server) and the
session's wall time from sending to the last token of both answers (queueing included).

    # GPU, the internvl2-2b preset (random weights at the real sizes), LMDeploy's PyTorch engine:
    python benchmarks/bench_demo.py --preset internvl2-2b --backend lmdeploy --sessions 1 8 \
        --out benchmarks/results/demo-lmdeploy-h200.json
    # CPU smoke run on the tiny model:
    python benchmarks/bench_demo.py --preset tiny --backend transformers --sessions 1 2 \
        --max-new-tokens 8 --out /tmp/d.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import SAMPLE_DATA_DIR, demo, tiny
from helpers.env import package_version
from helpers.internvl import COURSE_PROMPT

STATS_RE = re.compile(
    r"first token after (?P<ttft>[\d.]+) s · (?P<tokens>\d+) tokens in (?P<seconds>[\d.]+) s = "
    r"(?P<tps>[\d.]+) tokens/s · prompt (?P<prompt>\d+) tokens"
)
PHOTO = SAMPLE_DATA_DIR / "ex_images" / "kite.jpg"


def parse_stats(text: str) -> dict[str, float] | None:
    """The numbers of one answer's statistics line (see :func:`helpers.demo.format_stats`), or None.

    >>> parse_stats("first token after 0.50 s · 8 tokens in 2.00 s = 4.0 tokens/s · prompt 300 tokens · finished")
    {'ttft': 0.5, 'tokens': 8.0, 'seconds': 2.0, 'tps': 4.0, 'prompt': 300.0}
    """
    m = STATS_RE.search(text or "")
    return {k: float(v) for k, v in m.groupdict().items()} if m else None


def one_round(url: str, sessions: int, max_new_tokens: int) -> list[dict]:
    """``sessions`` clients upload a photo, then all ask at once; one row per session."""
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(sessions)]
    for c in clients:
        c.predict(handle_file(str(PHOTO)), api_name="/upload")
    controls = (max_new_tokens, 0, 1, 0, 1, 0)  # greedy: max_new_tokens, temperature, top_p, top_k, penalty, seed
    rows: list[dict] = [{} for _ in range(sessions)]
    go = threading.Barrier(sessions)

    def ask(i: int) -> None:
        go.wait()
        t0 = time.perf_counter()
        out = clients[i].predict(COURSE_PROMPT, *controls, api_name="/ask")
        rows[i] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "status": out[1],
            "base": parse_stats(out[4]),
            "tuned": parse_stats(out[5]),
        }

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for r in rows:
        r["round_wall_s"] = round(wall, 3)
    return rows


def summary(rows: list[dict]) -> dict:
    """Medians over sessions, per model, and the round's throughput (all tokens / round wall time)."""
    out: dict = {
        "sessions": len(rows),
        "round_wall_s": rows[0]["round_wall_s"],
        "session_wall_s_median": statistics.median(r["wall_s"] for r in rows),
        "session_wall_s_max": max(r["wall_s"] for r in rows),
    }
    tokens = 0.0
    for side in ("base", "tuned"):
        got = [r[side] for r in rows if r.get(side)]
        if got:
            out[side] = {
                "ttft_s_median": statistics.median(g["ttft"] for g in got),
                "tokens_per_s_median": statistics.median(g["tps"] for g in got),
                "prompt_tokens": got[0]["prompt"],
                "answers": len(got),
            }
            tokens += sum(g["tokens"] for g in got)
    out["tokens_per_s_all_sessions"] = round(tokens / out["round_wall_s"], 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="internvl2-2b", choices=sorted(tiny.PRESETS))
    ap.add_argument("--backend", default="auto", choices=("auto", "lmdeploy", "transformers"))
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--concurrency", type=int, default=1, help="the demo's --concurrency (requests at once)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--workdir", default="/tmp/bench-demo")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    work = Path(args.workdir)
    device = "cuda" if cuda else "cpu"
    base = tiny.build(args.preset, work / "base", seed=0, overwrite=True, device=device)
    tuned = tiny.build(args.preset, work / "tuned", seed=1, overwrite=True, device=device)
    extra = [
        "--backend",
        args.backend,
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--concurrency",
        str(args.concurrency),
    ]
    server = demo.start(base, tuned, extra=extra, log=work / "demo.log", timeout=900)
    results = {}
    try:
        one_round(server.url, 1, 8)  # warm-up: both engines compile and allocate
        for n in args.sessions:
            rows = one_round(server.url, n, args.max_new_tokens)
            results[str(n)] = {"summary": summary(rows), "rows": rows}
            print(json.dumps(results[str(n)]["summary"]), flush=True)
    finally:
        server.stop()
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    record = {
        "benchmark": "web demo (helpers.demo): N sessions ask the course prompt about kite.jpg at once",
        "machine": name,
        "preset": args.preset,
        "backend": args.backend,
        "concurrency": args.concurrency,
        "max_new_tokens": args.max_new_tokens,
        "greedy": True,
        "versions": {p: package_version(p) for p in ("torch", "transformers", "lmdeploy", "gradio")},
        "method": "ttft and tokens/s are the page's statistics (helpers.infer, measured in the server per answer); "
        "session wall time is from the client's send to both answers' last token, queueing included; one warm-up "
        "round of 1 session first",
        "results": results,
        "log_tail": (work / "demo.log").read_text(errors="replace")[-1500:],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
