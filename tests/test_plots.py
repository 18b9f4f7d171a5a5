"""Tests for helpers.plots: the figures build, with the expected axes, under any backend."""

from __future__ import annotations

import io
import warnings

import pytest

from helpers import data, plots
from helpers.errors import DatasetError


class CharTokenizer:
    bos_token_id = 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_gallery_has_one_axes_per_image():
    ds = data.load_sample()
    fig = plots.gallery(ds, n=8, cols=4)
    assert len(fig.axes) == 8
    assert fig.axes[0].get_title().replace("\n", "") == ds[0].caption
    assert render(fig).startswith(b"\x89PNG")


def test_gallery_drops_unused_cells_and_clips_to_the_dataset():
    ds = data.load_sample("eval")
    assert len(plots.gallery(ds, n=5, cols=4).axes) == 5
    assert len(plots.gallery(ds, n=100, cols=4).axes) == len(ds)
    assert len(plots.gallery(ds, n=3, cols=4, start=len(ds) - 2).axes) == 2
    with pytest.raises(DatasetError):
        plots.gallery(ds, start=len(ds))


def test_gallery_draws_chinese_without_missing_glyphs():
    if plots.cjk_font() is None:
        pytest.skip("no CJK font installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing" without a CJK font
        render(plots.gallery(data.load_sample("eval"), n=4))


def test_gallery_falls_back_to_ids_without_cjk_font(monkeypatch):
    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    ds = data.load_sample("eval")
    fig = plots.gallery(ds, n=2, cols=2)
    assert [ax.get_title() for ax in fig.axes] == [ds[0].id, ds[1].id]
    assert "fonts-noto-cjk" in fig._suptitle.get_text()


def test_length_histograms_three_panels():
    ds = data.load_sample()
    fig = plots.length_histograms(data.dataset_stats(ds, CharTokenizer()), max_length=4096)
    assert len(fig.axes) == 3
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert labels == ["max_length=4096", "image tokens", "text tokens"]
    assert render(fig).startswith(b"\x89PNG")


def test_length_histograms_without_tokenizer_and_bad_input():
    fig = plots.length_histograms(data.dataset_stats(data.load_sample("eval")))
    assert len(fig.axes) == 3
    assert fig.axes[1].get_legend_handles_labels()[1] == ["image tokens"]
    with pytest.raises(DatasetError, match="dataset_stats"):
        plots.length_histograms({"tiles": [1]})
