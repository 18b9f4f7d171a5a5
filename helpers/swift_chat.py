"""ms-swift's Python inference API, two turns with history and a streamed answer (run in ``.venv-swift``).

The course notes call ``inference(model, template, query, images=...)`` and
``inference_stream(...)`` from ms-swift 2.x. ms-swift 3 removed both; their
replacement is an *inference engine*: ``PtEngine`` (PyTorch; ``VllmEngine``
and ``LmdeployEngine`` have the same interface) whose ``infer`` takes
``InferRequest`` objects (OpenAI-style ``messages`` plus ``images``) and a
``RequestConfig``. History is the ``messages`` list itself: append the
assistant's answer and the next question. ``RequestConfig(stream=True)``
makes ``infer`` return one generator of chunks per request: that is the new
``inference_stream``.

Run by notebook 12 through :func:`helpers.ms_swift.run`::

    .venv-swift/bin/python helpers/swift_chat.py MODEL_DIR IMAGE PROMPT FOLLOW_UP --max-new-tokens 16

It prints each step and, last, one JSON line with both answers and the chunks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Two turns on ``model``: ``prompt`` with the image, then ``follow_up`` streamed, with the history."""
    parser = argparse.ArgumentParser(prog="swift_chat.py")
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("prompt")
    parser.add_argument("follow_up")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    import swift_plugin  # registers the internvl2_book template (see that module)
    from swift.llm import InferRequest, PtEngine, RequestConfig

    engine = PtEngine(args.model, model_type="internvl2", template_type=swift_plugin.TEMPLATE)
    config = RequestConfig(max_tokens=args.max_new_tokens, temperature=0)

    messages = [{"role": "user", "content": args.prompt}]
    first = engine.infer([InferRequest(messages=messages, images=[args.image])], config)[0]
    answer = first.choices[0].message.content
    print(f"turn 1 (engine.infer): {answer!r}", flush=True)

    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": args.follow_up}]
    stream_config = RequestConfig(max_tokens=args.max_new_tokens, temperature=0, stream=True)
    chunks = []
    print("turn 2 (stream=True): ", end="", flush=True)
    for chunk in engine.infer([InferRequest(messages=messages, images=[args.image])], stream_config)[0]:
        if chunk is None:
            continue
        delta = chunk.choices[0].delta.content or ""
        chunks.append(delta)
        print(delta, end="|", flush=True)
    print(flush=True)
    messages.append({"role": "assistant", "content": "".join(chunks)})
    print(json.dumps({"first": answer, "chunks": chunks, "messages": messages}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
