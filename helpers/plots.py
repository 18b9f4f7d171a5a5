"""The figures the notebooks show, drawn with matplotlib only.

Every function builds a :class:`matplotlib.figure.Figure` directly (no
``pyplot``), so it works under any backend, headless included, keeps no global
figure state, and is shown exactly once when a notebook cell returns it. Save
one with ``fig.savefig(path)``.

Captions are Chinese, so the first use looks for a CJK font (Noto Sans CJK,
Source Han Sans, WenQuanYi, SimHei, ...) among matplotlib's fonts and, when
its font cache predates the install, among the system's font files. Without
one (Debian/Ubuntu: ``apt-get install fonts-noto-cjk``) the figures still
build, but titles show record ids instead of captions, and say so.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .data import SampleSet
from .errors import DatasetError
from .internvl import TilingSettings

__all__ = ["cjk_font", "figure", "gallery", "length_histograms", "loss_curves", "smooth", "tile_grid", "before_after"]

_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
    "Noto Serif CJK SC",
    "AR PL UMing CN",
    "Droid Sans Fallback",
)
_CJK_FILE_HINTS = (
    "notosanscjk",
    "notoserifcjk",
    "notosanssc",
    "sourcehansans",
    "wqy",
    "wenquanyi",
    "msyh",
    "simhei",
    "pingfang",
    "hiragino",
    "uming",
    "ukai",
    "droidsansfallback",
)


@functools.cache
def cjk_font() -> str | None:
    """Name of a font family that can draw Chinese, or None when none is installed.

    Registers the system's CJK font files with matplotlib when its font cache
    does not know them yet (a font installed after matplotlib first ran).

    >>> cjk_font() is None or isinstance(cjk_font(), str)
    True
    """
    from matplotlib import font_manager

    def pick() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in _CJK_FAMILIES if n in names), next((n for n in sorted(names) if "CJK" in n), None))

    if (name := pick()) is not None:
        return name
    for path in font_manager.findSystemFonts():
        if any(hint in Path(path).name.lower().replace("-", "").replace("_", "") for hint in _CJK_FILE_HINTS):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
                continue
    return pick()


def _register_display() -> None:
    """Let IPython show a bare Figure as a PNG (pyplot's inline backend does this only once pyplot is used)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - outside Jupyter nothing needs to be registered
        return
    shell = get_ipython()
    if shell is None:
        return
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    formatter = shell.display_formatter.formatters["image/png"]
    formatter.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight", dpi=100))


def figure(width: float, height: float) -> Any:
    """An empty Figure for your own plot, shown by Jupyter like the book's (no pyplot needed).

    >>> len(figure(4, 3).subplots(1, 2))
    2
    """
    return _figure(width, height)


def _figure(width: float, height: float):
    """A backend-independent Figure with constrained layout."""
    from matplotlib.figure import Figure

    _register_display()
    return Figure(figsize=(width, height), layout="constrained")


def gallery(ds: SampleSet, n: int = 8, cols: int = 4, *, start: int = 0, wrap: int = 12) -> Any:
    """Show ``n`` records from ``start`` on: each image with its caption as the title.

    One axes per shown image (``min(n, len(ds) - start)`` of them), ``cols`` per
    row, captions wrapped every ``wrap`` characters. Without a CJK font the
    titles are the record ids (see the module docstring).

    >>> from helpers.data import load_sample
    >>> len(gallery(load_sample("eval"), n=4, cols=2).axes)
    4
    """
    import numpy as np
    from PIL import Image

    records = list(ds)[start : start + n]
    if not records:
        raise DatasetError(f"nothing to show: the dataset has {len(ds)} records and start={start}")
    cols = max(1, min(cols, len(records)))
    rows = -(-len(records) // cols)
    fig = _figure(3.0 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    font = cjk_font()
    for ax, record in zip(axes, records):
        with Image.open(ds.image_path(record)) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_axis_off()
        if font is not None:
            ax.set_title("\n".join(textwrap.wrap(record.caption, wrap)), fontsize=9, fontfamily=[font, "DejaVu Sans"])
        else:
            ax.set_title(record.id, fontsize=9)
    for ax in axes[len(records) :]:
        fig.delaxes(ax)
    if font is None:
        fig.suptitle("record ids shown: no CJK font for the captions (apt-get install fonts-noto-cjk)", fontsize=9)
    return fig


def _column(stats: Mapping[str, Sequence], key: str) -> list:
    """One column of the stats dict, or a DatasetError saying how to make the dict."""
    if key not in stats:
        raise DatasetError(f"stats has no {key!r} column: pass helpers.data.dataset_stats(ds, tokenizer)")
    return list(stats[key])


def length_histograms(stats: Mapping[str, Sequence], max_length: int | None = None) -> Any:
    """Three panels: caption characters, text vs image tokens per sample, tiles per image.

    ``stats`` is :func:`helpers.data.dataset_stats`'s dict. The middle panel
    stacks each sample's text and image tokens (sorted by total) so you see
    that the image dominates the length; with ``max_length`` it draws that
    limit. Without a tokenizer (``text_tokens`` all ``None``) it shows image
    tokens only.

    >>> from helpers.data import dataset_stats, load_sample
    >>> len(length_histograms(dataset_stats(load_sample("eval"))).axes)
    3
    """
    chars = _column(stats, "caption_chars")
    text = [t or 0 for t in _column(stats, "text_tokens")]
    image = _column(stats, "image_tokens")
    tiles = _column(stats, "tiles")
    fig = _figure(13, 3.6)
    ax_chars, ax_tokens, ax_tiles = fig.subplots(1, 3, width_ratios=[1, 1.6, 1])

    ax_chars.hist(chars, bins=range(min(chars), max(chars) + 2), color="tab:blue", edgecolor="white")
    ax_chars.set(title="Caption length", xlabel="characters", ylabel="records")

    order = sorted(range(len(image)), key=lambda i: text[i] + image[i])
    xs = range(len(order))
    ax_tokens.bar(xs, [image[i] for i in order], width=1.0, color="tab:orange", label="image tokens")
    if any(text):
        ax_tokens.bar(
            xs,
            [text[i] for i in order],
            bottom=[image[i] for i in order],
            width=1.0,
            color="tab:blue",
            label="text tokens",
        )
    if max_length is not None:
        ax_tokens.axhline(max_length, color="tab:red", linestyle="--", label=f"max_length={max_length}")
    ax_tokens.set(title="Tokens per sample (sorted)", xlabel="sample", ylabel="tokens")
    ax_tokens.legend(loc="upper left", fontsize=8)

    values = sorted(set(tiles))
    ax_tiles.bar([str(v) for v in values], [tiles.count(v) for v in values], color="tab:green")
    ax_tiles.set(title="Tiles per image", xlabel="448-px tiles (thumbnail included)", ylabel="images")
    return fig


def tile_grid(image: Any, tiling: TilingSettings | None = None) -> Any:
    """Show how InternVL2 cuts one PIL image: the original with the tile grid drawn on it, then each tile.

    ``tiling`` is the model's :class:`~helpers.internvl.TilingSettings`
    (default: InternVL2-2B's). The title of the first panel gives the grid, the
    number of tiles and the ``<IMG_CONTEXT>`` tokens they cost
    (``tiles * num_image_token``).

    >>> from PIL import Image
    >>> len(tile_grid(Image.new("RGB", (900, 450))).axes)   # original + 2 tiles + thumbnail
    4
    """
    from .tiling import dynamic_tiles

    s = tiling or TilingSettings()
    plan = s.plan(*image.size)
    tiles = dynamic_tiles(
        image, min_num=s.min_num, max_num=s.max_num, image_size=s.image_size, use_thumbnail=s.use_thumbnail
    )
    n = len(tiles) + 1
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig = _figure(2.0 * cols, 2.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    w, h = image.size
    axes[0].imshow(image)
    for c in range(1, plan.cols):
        axes[0].axvline(c * w / plan.cols, color="yellow", lw=1.5)
    for r in range(1, plan.rows):
        axes[0].axhline(r * h / plan.rows, color="yellow", lw=1.5)
    axes[0].set_title(
        f"{w}x{h} -> {plan.cols}x{plan.rows} grid\n{plan.num_tiles} tiles = "
        f"{plan.num_tiles * s.num_image_token} tokens",
        fontsize=8,
    )
    for i, (ax, tile) in enumerate(zip(axes[1:], tiles)):
        ax.imshow(tile)
        is_thumb = plan.thumbnail and i == len(tiles) - 1
        ax.set_title("thumbnail" if is_thumb else f"tile {i + 1}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (window 1 returns the values unchanged).

    >>> smooth([1, 2, 3, 4], 2)
    [1.0, 1.5, 2.5, 3.5]
    """
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    window: int = 1,
    title: str = "QLoRA training",
    ylabel: str = "logged loss (mean of the last 10 iterations)",
) -> Any:
    """Loss (as logged, faint, and smoothed) and learning rate against step, one colour per run.

    ``runs`` maps a run's name to its logged rows (``helpers.train.read_scalars``:
    dicts with ``step``, ``loss``, ``lr``). mmengine logs ``loss`` as the mean
    of the last 10 iterations (its ``LogProcessor`` window), and the axis says so
    (``ylabel`` for rows of another kind, e.g. :func:`helpers.train.merged_losses`).

    >>> rows = [{"step": s, "loss": 5 - s / 10, "lr": 1e-3} for s in range(1, 11)]
    >>> len(loss_curves({"a": rows, "b": rows}, window=3).axes)
    2
    """
    fig = _figure(12, 3.8)
    ax_loss, ax_lr = fig.subplots(1, 2)
    colours = [f"C{i}" for i in range(10)]
    for i, (name, rows) in enumerate(runs.items()):
        rows = [r for r in rows if "loss" in r]
        if not rows:
            continue
        c = colours[i % len(colours)]
        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        if window > 1:
            ax_loss.plot(steps, losses, color=c, alpha=0.25, lw=1)
        ax_loss.plot(steps, smooth(losses, window), color=c, lw=2, label=name)
        if any("lr" in r for r in rows):
            ax_lr.plot(steps, [r.get("lr", float("nan")) for r in rows], color=c, lw=2, label=name)
    ax_loss.set(
        xlabel="iteration",
        ylabel=ylabel,
        title=f"{title}: loss" + (f" (moving average of {window})" if window > 1 else ""),
    )
    ax_lr.set(xlabel="iteration", ylabel="learning rate", title="learning-rate schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        if len(runs) > 1 or window > 1:
            ax.legend(fontsize=8)
    return fig


def before_after(ds: SampleSet, rows: Sequence[Mapping[str, Any]], n: int = 4, wrap: int = 16) -> Any:
    """A gallery row per record: the image, then the reference caption and the answers before and after.

    ``rows`` are :func:`helpers.compare.compare_answers` rows (``id``,
    ``reference``, ``before``, ``after``, ``chrf_before``, ``chrf_after``).

    >>> from helpers.data import load_sample
    >>> ds = load_sample("eval")
    >>> r = [{"id": ds[0].id, "reference": "参考", "before": "", "after": "参考", "chrf_before": 0, "chrf_after": 100}]
    >>> len(before_after(ds, r).axes)
    2
    """
    import numpy as np
    from PIL import Image

    by_id = {r.id: r for r in ds}
    rows = [r for r in rows if r["id"] in by_id][:n]
    if not rows:
        raise DatasetError("nothing to show: none of the rows' ids are in the dataset")
    font = cjk_font()
    fig = _figure(11, 2.6 * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False, width_ratios=[1, 3])

    def fmt(label: str, text: str, score: float | None) -> str:
        body = "\n    ".join(textwrap.wrap(text, wrap * 2)) if text.strip() else "(empty answer)"
        tail = f"   [chrF {score:.0f}]" if score is not None else ""
        return f"{label}: {body}{tail}"

    for (ax_img, ax_txt), row in zip(axes, rows):
        with Image.open(ds.image_path(by_id[row["id"]])) as im:
            ax_img.imshow(np.asarray(im.convert("RGB")))
        ax_img.set_axis_off()
        ax_img.set_title(row["id"], fontsize=8)
        ax_txt.set_axis_off()
        lines = [
            fmt("reference", row["reference"], None),
            fmt("before", row["before"], row.get("chrf_before")),
            fmt("after", row["after"], row.get("chrf_after")),
        ]
        if font is None:  # without a CJK font, show the scores only
            lines = [f"{k}: chrF {row.get('chrf_' + k, float('nan')):.0f}" for k in ("before", "after")]
        ax_txt.text(
            0.0,
            0.95,
            "\n\n".join(lines),
            va="top",
            ha="left",
            fontsize=9,
            transform=ax_txt.transAxes,
            fontfamily=[font, "DejaVu Sans"] if font else None,
        )
    return fig
