"""A web demo: the base and the fine-tuned InternVL2 answer side by side in the browser (Gradio).

Notebook ``08_web_demo`` teaches this module. It is the course's Gradio demo
(an app over LMDeploy's ``pipeline.chat``, reached through ``ssh -L``) built
on :mod:`helpers.infer` only, so the page answers exactly as the notebooks do:

* pick a photo of the bundled eval split from the gallery, or upload one;
* the course prompt is prefilled and editable;
* the base and the fine-tuned model answer side by side, streamed token by
  token, with the time to the first token and tokens per second under each;
* each model keeps its own multi-turn history (``Pipeline.stream(...,
  history)``), per browser session; *New chat* clears both;
* generation controls map one to one onto :class:`helpers.infer.GenSettings`
  (greedy by default);
* the page says which backend and which model folders answer.

Bad input never stops the server: the message goes to the status line of the
page (not an image, an image too large for ``session_len``, an empty prompt,
settings out of range, a model folder that disappeared). Requests from all
sessions go through one queue, ``concurrency`` (default 1) at a time: both
models live in this one process, and on a CPU one generation already uses
every core, so two at once would only each run at half speed.

Gradio never phones home here: ``GRADIO_ANALYTICS_ENABLED=False`` is set before
it is imported, no share link is made, and the default theme's fonts are local.

Command line::

    python -m helpers.demo --base DIR [--tuned DIR] [--backend auto|lmdeploy|transformers]
                           [--host 127.0.0.1] [--port 7860]

From a Python process (a notebook), :func:`start` runs that command in the
background and returns a :class:`Server` to :meth:`Server.stop` (or use it in
a ``with`` block)::

    with demo.start(base_dir, tuned_dir) as server:
        print(server.url)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_DIR, SAMPLE_DATA_DIR, repo_path
from .errors import BookError, ModelDirError, UsageError
from .infer import BACKENDS, DEFAULT_SESSION_LEN, GenSettings, Pipeline, PromptWarning, load, load_image
from .internvl import COURSE_PROMPT, IMAGE_TOKEN

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "GRADIO_VERSION",
    "Side",
    "Demo",
    "Server",
    "gallery_images",
    "format_stats",
    "start",
    "screenshot",
    "wait_for_status",
    "upload",
    "page_text",
    "main",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: The Gradio release the book pins (requirements/no-deps.txt says why this one).
GRADIO_VERSION = "6.17.3"
#: The course notes' sampling settings (``GenerationConfig(top_p=0.8, temperature=0.8)``, ``top_k=40``).
COURSE_SAMPLING = {"temperature": 0.8, "top_p": 0.8, "top_k": 40}
SIDES = ("base", "tuned")


def _gradio() -> Any:
    """Import Gradio with its telemetry off; a clear error when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports, no version check
    os.environ.setdefault("GRADIO_SERVER_NAME", DEFAULT_HOST)
    try:
        import gradio
    except ImportError as exc:
        raise UsageError(
            f"gradio is not installed ({exc}). Fix: bash tools/install.sh (it installs gradio=={GRADIO_VERSION} "
            "from requirements/no-deps.txt), or pip install --no-deps "
            f"gradio=={GRADIO_VERSION} with the pins of requirements/base.txt."
        ) from exc
    return gradio


# --------------------------------------------------------------------------- the models


@dataclass
class Side:
    """One model of the demo: its label on the page, its folder and its loaded :class:`~helpers.infer.Pipeline`."""

    key: str
    label: str
    path: Path
    pipe: Pipeline
    loaded_at: str = field(default_factory=lambda: _dt.datetime.now().strftime("%H:%M:%S"))

    def folder_problem(self) -> str | None:
        """A sentence when the model folder is gone since it was loaded (the weights stay in memory), else None."""
        if (self.path / "config.json").is_file():
            return None
        return (
            f"the {self.label} model folder {self.path} is gone (moved or deleted since {self.loaded_at}). "
            "Its answers still come from the copy loaded in memory; a restart of the demo would fail "
            "until the folder is back."
        )


def gallery_images(data_path: str | Path = SAMPLE_DATA_DIR, limit: int = 24) -> list[tuple[Path, str]]:
    """``(image path, caption)`` of the held-out images of a dataset: its eval split if it has one.

    The book's sample keeps its own eval split (photos no training record
    shows); any other dataset shows its first ``limit`` records.

    >>> [p.name for p, _ in gallery_images()][:2]
    ['dogs_window.jpg', 'wine_drum.jpg']
    """
    from .data import load_dataset, resolve_layout

    layout = resolve_layout(data_path)
    ds = load_dataset(data_path, split="eval" if layout.split_files else None)
    return [(ds.image_path(r), r.id) for r in list(ds)[:limit]]


def format_stats(answer: Any) -> str:
    """One line under an answer: time to the first token, tokens per second, prompt size, why it stopped.

    >>> from helpers.infer import Answer
    >>> format_stats(Answer("hi", "q", tokens=8, prompt_tokens=300, seconds=2.0, first_token_s=0.5,
    ...                     latency_s=2.0, backend="transformers", finish_reason="length"))
    'first token after 0.50 s · 8 tokens in 2.00 s = 4.0 tokens/s · prompt 300 tokens · stopped at max_new_tokens'
    """
    first = "no token" if answer.first_token_s is None else f"first token after {answer.first_token_s:.2f} s"
    why = "stopped at max_new_tokens" if answer.finish_reason == "length" else "finished"
    return (
        f"{first} · {answer.tokens} tokens in {answer.seconds:.2f} s = {answer.tokens_per_s:.1f} tokens/s · "
        f"prompt {answer.prompt_tokens} tokens · {why}"
    )


#: What the chat shows for an answer without text (the model's first token was its stop token).
EMPTY_ANSWER = "∅ (no text: the model stopped at once)"


#: A question repeated within this many seconds after the same session's answers finished is the
#: queued second click of a double click, not a new turn (with one request at a time, it waits in the
#: queue while the first streams and reaches the server just after it).
REPEAT_WINDOW_S = 3.0


def _messages(history: Sequence[tuple[str, str]], pending: tuple[str, str] | None = None) -> list[dict[str, str]]:
    """A chat history as Gradio's ``messages`` (what ``gr.Chatbot`` shows), the pending turn last.

    The chat renders Markdown, where ``<image>`` would vanish as an unknown
    HTML tag: it is shown as code. A finished empty answer shows
    :data:`EMPTY_ANSWER`.

    >>> [m["content"] for m in _messages([("<image>\\nhi", "")])]
    ['`<image>`\\nhi', '∅ (no text: the model stopped at once)']
    """
    out = []
    for q, a in history:
        out += [{"role": "user", "content": _shown(q)}, {"role": "assistant", "content": a or EMPTY_ANSWER}]
    if pending:
        out += [{"role": "user", "content": _shown(pending[0])}, {"role": "assistant", "content": pending[1]}]
    return out


def _shown(question: str) -> str:
    return question.replace(IMAGE_TOKEN, f"`{IMAGE_TOKEN}`")


def _fresh_state() -> dict[str, Any]:
    return {"image": None, "image_name": "", "history": {k: [] for k in SIDES}, "stats": {k: "" for k in SIDES}}


# --------------------------------------------------------------------------- the app


class Demo:
    """The models, the gallery and the Gradio app around them.

    ``base`` (and ``tuned``, optional) are InternVL2 folders, loaded once with
    :func:`helpers.infer.load`. All per-user data (the chosen image, both
    histories) lives in the browser session's ``gr.State``, so two sessions
    never see each other's conversation.

    >>> app = Demo("_build/outputs/models/tiny-internvl2", "_build/outputs/merged")   # doctest: +SKIP
    >>> app.build().launch()   # doctest: +SKIP
    """

    def __init__(
        self,
        base: str | Path,
        tuned: str | Path | None = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        session_len: int = DEFAULT_SESSION_LEN,
        max_num: int | None = None,
        data_path: str | Path = SAMPLE_DATA_DIR,
        max_new_tokens: int = 128,
        concurrency: int = 1,
    ) -> None:
        from .infer import choose_backend

        if not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(f"concurrency={concurrency!r} must be a positive integer (1 = one request at a time).")
        self.choice = choose_backend(backend, device)
        self.gallery = gallery_images(data_path)
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.sides: dict[str, Side] = {}
        for key, label, path in (("base", "base", base), ("tuned", "fine-tuned", tuned)):
            if path is None:
                continue
            pipe = load(
                path,
                self.choice.backend,
                device=self.choice.device,
                session_len=session_len,
                max_num=max_num,
                verbose=False,
            )
            self.sides[key] = Side(key, label, repo_path(path), pipe)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._last: dict[str, tuple[str, float]] = {}  # session -> (last question, when its answers were done)

    # -- what the page says about itself
    def describe(self) -> str:
        """Markdown: which backend runs and which folder answers on each side."""
        lines = [f"**{self.choice.reason}**", ""]
        for side in self.sides.values():
            p = side.pipe
            lines.append(
                f"- **{side.label}**: `{side.path}` ({p.backend} on {p.device}, session_len {p.session_len}, "
                f"up to {p.tiling.max_num} tiles of {p.tiling.num_image_token} tokens per image; "
                f"loaded {side.loaded_at})"
            )
        lines.append(
            f"- requests from every browser session share one queue, {self.concurrency} at a time "
            "(both models live in one process; on a CPU one generation already uses every core)"
        )
        return "\n".join(lines)

    def close(self) -> None:
        for side in self.sides.values():
            side.pipe.close()

    # -- the handlers (plain Python: the tests call them without a browser too)
    def check_image(self, path: str | Path | None) -> str:
        """Open ``path`` as an image and check that it fits ``session_len`` with the course prompt; the path back.

        Raises :class:`~helpers.errors.ImageError` for a file that is not an
        image and :class:`~helpers.errors.SessionLengthError` for one whose
        tiles alone do not fit (the messages say what to do).
        """
        if path is None:
            raise UsageError("no image: pick one in the gallery or upload one.")
        image = load_image(path)  # ImageError for what is not an image
        for side in self.sides.values():
            side.pipe.render(COURSE_PROMPT, image)  # SessionLengthError when the tiles alone are too many
        return str(path)

    def settings(
        self,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        top_k: float,
        repetition_penalty: float,
        seed: float | None,
    ) -> GenSettings:
        """The page's controls as :class:`GenSettings` (an :class:`InferenceError` for values out of range)."""

        def whole(v: float | None, name: str) -> int | None:
            if v is None:
                return None
            if float(v) != int(v):
                raise UsageError(f"{name}={v} must be a whole number.")
            return int(v)

        return GenSettings(
            max_new_tokens=whole(max_new_tokens, "max_new_tokens") or 0,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=whole(top_k, "top_k") or 0,
            repetition_penalty=float(repetition_penalty),
            seed=whole(seed, "seed"),
        )

    def respond(
        self, state: dict[str, Any], prompt: str, gen: GenSettings, session: str = ""
    ) -> Iterator[tuple[dict[str, Any], dict[str, str], str]]:
        """Answer ``prompt`` about the session's image with every model in turn, streaming.

        Yields ``(state, {side: partial answer}, status)`` after each piece of
        text (``partial`` holds the answers not yet complete); each model's
        history in ``state`` grows once its answer is complete. Every request is
        checked before the first token, so a :class:`~helpers.errors.BookError`
        (raised to the caller) leaves the state as it was. A second call for the
        same ``session`` while one runs yields a message and returns.
        """
        with self._busy_lock:
            if session in self._busy:
                yield (
                    state,
                    {},
                    ("⚠️ still answering your previous question in this session: wait until both answers are done."),
                )
                return
            last = self._last.get(session)
            if last and last[0] == prompt and time.monotonic() - last[1] < REPEAT_WINDOW_S:
                # a second click while the answer streamed waits in the queue and arrives right after it
                yield state, {}, "⚠️ a second click on Send came while the answer was streaming: ignored."
                return
            self._busy.add(session)
        try:
            yield from self._respond(state, prompt, gen)
        finally:
            with self._busy_lock:
                self._busy.discard(session)
                self._last[session] = (prompt, time.monotonic())

    def _respond(
        self, state: dict[str, Any], prompt: str, gen: GenSettings
    ) -> Iterator[tuple[dict[str, Any], dict[str, str], str]]:
        notes = [p for p in (side.folder_problem() for side in self.sides.values()) if p]
        if state.get("image") is None:
            raise UsageError("no image yet: pick a photo in the gallery or upload one, then send.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"the prompt is empty. Fix: ask a question, e.g. {COURSE_PROMPT!r}.")
        image = load_image(state["image"])
        # every request is checked (image, prompt, session length) before the first token of either
        streams = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptWarning)
            for key, side in self.sides.items():
                streams[key] = side.pipe.stream(image, prompt, gen, state["history"][key])
        notes += [f"note: {w.message}" for w in caught][:1]
        pending = {key: "" for key in self.sides}  # answers not yet in the history: shown as they grow
        for key, stream in streams.items():
            label = self.sides[key].label
            state["stats"][key] = "answering…"
            yield state, dict(pending), f"{label} model answering…"
            for piece in stream:
                pending[key] += piece
                yield state, dict(pending), f"{label} model answering…"
            answer = stream.answer
            state["history"][key] = [tuple(t) for t in answer.history]
            state["stats"][key] = format_stats(answer)
            del pending[key]
        turns = len(next(iter(state["history"].values())))
        status = f"done: turn {turns} of this chat about {state['image_name']}."
        yield state, {}, " ".join(["⚠️ " + n for n in notes] + [status])

    # -- the page
    def build(self) -> Any:
        """The Gradio ``Blocks`` app (not launched)."""
        gr = _gradio()
        sides = self.sides

        with gr.Blocks(title="InternVL2: before and after fine-tuning", analytics_enabled=False) as app:
            state = gr.State(_fresh_state())
            gr.Markdown(
                "# InternVL2 before and after fine-tuning\n"
                "Pick a held-out photo (or upload one), edit the prompt, send: both models answer the same "
                "prompt with the same settings. Later questions continue each model's own chat."
            )
            gr.Markdown(self.describe(), elem_id="models")
            with gr.Row():
                with gr.Column(scale=2):
                    gallery = gr.Gallery(
                        value=[(str(p), name) for p, name in self.gallery],
                        label="Eval photos (never seen in training): click one",
                        columns=6,
                        height=260,
                        allow_preview=False,
                        elem_id="gallery",
                    )
                    upload = gr.File(label="…or upload an image", elem_id="upload", height=100)
                with gr.Column(scale=1):
                    preview = gr.Image(
                        label="Image of this chat", type="filepath", interactive=False, height=260, elem_id="preview"
                    )
            prompt = gr.Textbox(
                value=COURSE_PROMPT, label="Prompt (<image> marks where the photo goes)", lines=2, elem_id="prompt"
            )
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                reset = gr.Button("New chat", elem_id="reset")
            status = gr.Markdown("Pick an image to start.", elem_id="status")
            chats, stats = {}, {}
            with gr.Row():
                for key, side in sides.items():
                    with gr.Column():
                        chats[key] = gr.Chatbot(
                            label=f"{side.label}: {side.path.name}",
                            height=320,
                            feedback_options=None,
                            elem_id=f"chat-{key}",
                        )
                        stats[key] = gr.Markdown("", elem_id=f"stats-{key}")
            with gr.Accordion("Generation settings (greedy by default)", open=False):
                with gr.Row():
                    max_new = gr.Slider(1, 2048, value=self.max_new_tokens, step=1, label="max_new_tokens")
                    temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p (1 = off)")
                with gr.Row():
                    top_k = gr.Slider(0, 200, value=0, step=1, label="top_k (0 = off)")
                    rep = gr.Slider(0.5, 2, value=1.0, step=0.05, label="repetition_penalty (1 = off)")
                    seed = gr.Number(value=0, precision=0, label="seed (for sampling)")
                course = gr.Button("Course settings: sample with temperature 0.8, top_p 0.8, top_k 40", size="sm")
            controls = [max_new, temperature, top_p, top_k, rep, seed]
            keys = list(sides)

            def show(st: dict[str, Any], note: str) -> tuple:
                return (
                    st,
                    st["image"],
                    note,
                    *[_messages(st["history"][k]) for k in keys],
                    *[st["stats"][k] for k in keys],
                )

            view = [state, preview, status, *[chats[k] for k in keys], *[stats[k] for k in keys]]

            def pick(st: dict[str, Any], evt: gr.SelectData) -> tuple:
                path, name = self.gallery[evt.index]
                return use_image(st, str(path), name)

            def use_image(st: dict[str, Any], path: str | None, name: str) -> tuple:
                try:
                    checked = self.check_image(path)
                except BookError as exc:
                    return show(st, f"⚠️ {exc}")
                except Exception as exc:  # the server keeps serving; the page says what happened
                    return show(st, f"⚠️ this file cannot be used: {type(exc).__name__}: {exc}")
                new = _fresh_state()
                new.update(image=checked, image_name=name)
                return show(new, f"image: {name}. A new chat starts; send the prompt.")

            def uploaded(st: dict[str, Any], file: Any) -> tuple:
                if file is None:
                    return (*show(st, "no file came with the upload."), None)
                path = getattr(file, "name", file)
                # the field is emptied again, ready for the next file; the chosen image shows on the right
                return (*use_image(st, path, Path(path).name), None)

            def ask(
                st: dict[str, Any],
                text: str,
                max_new_tokens: float,
                temperature: float,
                top_p: float,
                top_k: float,
                repetition_penalty: float,
                seed: float | None,
                request: gr.Request,
            ) -> Iterator[tuple]:
                session = getattr(request, "session_hash", "") or ""
                note = ""
                try:
                    gen = self.settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
                    for cur, pending, note in self.respond(st, text, gen, session):
                        turn = {k: (text, pending[k]) for k in pending}
                        msgs = [_messages(cur["history"][k], turn.get(k)) for k in keys]
                        stat = [cur["stats"][k] for k in keys]
                        yield (cur, cur["image"], note, *msgs, *stat, gr.update(interactive=False))
                except BookError as exc:
                    note = f"⚠️ {exc}"
                except Exception as exc:  # the server keeps serving; the page says what happened
                    traceback.print_exc()
                    note = f"⚠️ unexpected error: {type(exc).__name__}: {exc}"
                yield (*show(st, note), gr.update(interactive=True))

            def new_chat(st: dict[str, Any]) -> tuple:
                fresh = _fresh_state()
                fresh.update(image=st["image"], image_name=st["image_name"])
                return show(fresh, "new chat: both histories cleared (same image).")

            # the annotations are strings here (postponed evaluation): give Gradio the classes it looks for
            pick.__annotations__["evt"] = gr.SelectData
            ask.__annotations__["request"] = gr.Request
            gallery.select(pick, [state], view, api_name="pick")
            upload.upload(uploaded, [state, upload], [*view, upload], api_name="upload")
            event = dict(concurrency_limit=self.concurrency, concurrency_id="generate", trigger_mode="once")
            send.click(ask, [state, prompt, *controls], [*view, send], api_name="ask", **event)
            prompt.submit(ask, [state, prompt, *controls], [*view, send], api_visibility="private", **event)
            reset.click(new_chat, [state], view, api_name="reset")
            course.click(
                lambda: tuple(COURSE_SAMPLING.values()),
                None,
                [temperature, top_p, top_k],
                api_visibility="private",
            )
        app.queue(default_concurrency_limit=self.concurrency, max_size=64)
        return app

    def launch(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True) -> Any:
        """Build and serve the app on ``host:port`` (no share link, no telemetry)."""
        app = self.build()
        try:
            app.launch(
                server_name=host,
                server_port=port,
                share=False,
                ssr_mode=False,
                show_error=True,
                quiet=True,
                prevent_thread_lock=not block,
                allowed_paths=sorted({str(p.parent) for p, _ in self.gallery}),
            )
        except OSError as exc:
            raise UsageError(f"cannot serve on {host}:{port}: {exc}. Fix: pick another --port.") from exc
        return app


# --------------------------------------------------------------------------- running it in the background


@dataclass
class Server:
    """A demo running in a child process (see :func:`start`); ``stop()`` ends it and every process it started."""

    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``timeout`` s); its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_parent() -> None:
    """``preexec_fn``: the kernel sends the server SIGTERM when the process that started it dies (Linux)."""
    from .procgroup import PR_SET_PDEATHSIG, _prctl

    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(
    base: str | Path,
    tuned: str | Path | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout: float = 300.0,
    log: str | Path | None = None,
    extra: Sequence[str] = (),
) -> Server:
    """Run ``python -m helpers.demo`` in the background and wait until the page answers; a :class:`Server`.

    ``port=None`` takes a free port. The server's output goes to ``log`` (a
    temporary file by default). If it exits before it serves, the
    :class:`~helpers.errors.UsageError` carries the end of its log.
    """
    import tempfile
    import urllib.request

    port = port or _free_port(host)
    log = Path(log) if log else Path(tempfile.mkstemp(prefix="demo-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "helpers.demo", "--base", str(base), "--host", host, "--port", str(port)]
    if tuned is not None:
        cmd += ["--tuned", str(tuned)]
    cmd += list(extra)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_DIR), os.environ.get("PYTHONPATH", "")) if p
    )}  # fmt: skip
    with open(log, "wb") as out:
        # its own process group (stop() ends all of it), and SIGTERM when this process dies: no orphan server
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
    server = Server(f"http://{host}:{port}/", proc, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise UsageError(f"the demo exited with status {proc.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(server.url + "config", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise UsageError(f"the demo did not answer on {server.url} within {timeout:.0f} s; see {log}.")
        time.sleep(0.5)


# --------------------------------------------------------------------------- in a real browser


def page_text(driver: Any, elem_id: str) -> str:
    """The visible text of the page element with id ``elem_id`` ('' when it is not there)."""
    return driver.execute_script(f"const e = document.getElementById({elem_id!r}); return e ? e.innerText : '';")


def wait_for_status(driver: Any, *needles: str, timeout: float = 120.0) -> str:
    """Wait until the status line contains one of ``needles``; its text (a :class:`RunError` on timeout)."""
    from .errors import RunError

    deadline = time.monotonic() + timeout
    while True:
        text = page_text(driver, "status")
        if any(n in text for n in needles):
            return text
        if time.monotonic() > deadline:
            raise RunError(f"the demo's status line still says {text!r} after {timeout:.0f} s (waited for {needles}).")
        time.sleep(0.1)


def upload(driver: Any, path: str | Path) -> None:
    """Put a file into the page's upload field (what choosing it in the file dialog does)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(Path(path).resolve()))


def screenshot(url: str, image: str | Path, out: str | Path, timeout: float = 300.0) -> dict[str, str]:
    """Open the demo in headless Chromium, upload ``image``, send the prefilled prompt, save a PNG of the answers.

    Returns the page's status line, each side's answer statistics (``base``,
    ``tuned``) and the last answer as the page shows it (``base_answer``,
    ``tuned_answer``). Uses
    the book's Chromium set-up (:data:`helpers.site.CHROMIUM_FLAGS`); a
    :class:`~helpers.errors.UsageError` when Chromium is not installed
    (``bash tools/install-browser.sh``).
    """
    import tempfile

    from selenium.webdriver.common.by import By

    from .site import find_browser, open_chromium, wait_loaded

    browser = find_browser()
    if browser is None:
        raise UsageError("Chromium and chromedriver are not installed. Fix: bash tools/install-browser.sh")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-chromium-") as profile:
        driver = open_chromium(browser, profile)
        try:
            driver.set_window_size(1400, 1300)
            driver.get(url)
            wait_loaded(driver)
            wait_for_status(driver, "Pick an image", timeout=60)
            deadline = time.monotonic() + 30
            while not driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]") and time.monotonic() < deadline:
                time.sleep(0.1)
            upload(driver, image)
            wait_for_status(driver, f"image: {Path(image).name}", "⚠️", timeout=60)
            driver.find_element(By.ID, "send").click()
            status = wait_for_status(driver, "done:", "⚠️", timeout=timeout)
            driver.execute_script("document.getElementById('prompt').scrollIntoView();")
            time.sleep(0.5)
            driver.save_screenshot(str(out))
            answers = driver.execute_script(
                "return ['base', 'tuned'].map(k => Array.from(document.querySelectorAll("
                "`#chat-${k} [data-testid=bot]`)).map(e => e.innerText.trim()).pop() || '');"
            )
            return {
                "status": status,
                **{k: page_text(driver, f"stats-{k}") for k in SIDES},
                **{f"{k}_answer": a for k, a in zip(SIDES, answers)},
            }
        finally:
            driver.quit()


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.demo", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the base InternVL2 folder (e.g. the tiny model or InternVL2-2B)")
    p.add_argument("--tuned", help="the fine-tuned folder (notebook 06's output_dir/merged)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--host", default=DEFAULT_HOST, help="127.0.0.1 (this machine only, default) or 0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--session-len", type=int, default=DEFAULT_SESSION_LEN, help="tokens per conversation")
    p.add_argument("--max-num", type=int, default=None, help="max tiles per image (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the page's initial max_new_tokens")
    p.add_argument("--data", default=str(SAMPLE_DATA_DIR), help="dataset whose eval photos fill the gallery")
    p.add_argument("--concurrency", type=int, default=1, help="requests answered at once (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.demo``: serve until Ctrl-C; exit status 2 with one line when it cannot start."""
    from .errors import report

    args = _parser().parse_args(argv)
    try:
        for name in ("base", "tuned"):
            path = getattr(args, name)
            if path is not None and not (repo_path(path) / "config.json").is_file():
                from .internvl import read_config

                read_config(path)  # the ModelDirError that says what is wrong with the folder
                raise ModelDirError(f"--{name} {path} is not an InternVL2 model folder.")  # pragma: no cover
        _gradio()
        app = Demo(
            args.base,
            args.tuned,
            backend=args.backend,
            device=args.device,
            session_len=args.session_len,
            max_num=args.max_num,
            data_path=args.data,
            max_new_tokens=args.max_new_tokens,
            concurrency=args.concurrency,
        )
    except BookError as exc:
        return report(exc)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean stop from Server.stop()
    warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY.*")  # Gradio's, on every request
    print(app.describe().replace("**", ""), flush=True)
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        app.launch(args.host, args.port)
    except BookError as exc:
        return report(exc)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
