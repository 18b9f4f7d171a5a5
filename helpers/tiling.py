"""InternVL2's dynamic high-resolution tiling, written once for the whole book.

InternVL2 does not squash an image into one 448x448 square. It picks the grid
of 448-px tiles (1x1, 1x2, 2x1, 2x2, 1x3, ...) whose aspect ratio is closest to
the image's, with at most ``max_num`` tiles, resizes the image to that grid and
cuts it; when there is more than one tile it appends a 448x448 thumbnail of the
whole image. Each tile becomes ``num_image_token`` ``<IMG_CONTEXT>`` tokens
(256 for InternVL2-2B), so the tiling decides how long a sample is.

The rule follows the official ``dynamic_preprocess`` of InternVL (also copied
into XTuner's ``InternVL_V1_5_Dataset``); ``tests/test_tiling.py`` checks it
against hand-worked cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TilePlan:
    """How one image is cut: a ``cols`` x ``rows`` grid plus an optional thumbnail."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def num_tiles(self) -> int:
        """Tiles fed to the vision encoder, thumbnail included."""
        return self.cols * self.rows + int(self.thumbnail)


def candidate_grids(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """All ``(cols, rows)`` grids with ``min_num <= cols*rows <= max_num``, fewest tiles first.

    >>> candidate_grids(1, 2)
    [(1, 1), (1, 2), (2, 1)]
    """
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def closest_grid(
    width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to ``width/height``.

    Ties go to the larger grid when the image has enough pixels to fill more
    than half of it (the official rule), so big images get more tiles.

    >>> closest_grid(896, 448)
    (2, 1)
    """
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def plan_tiles(
    width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True
) -> TilePlan:
    """Decide the tiling of a ``width`` x ``height`` image without touching pixels.

    >>> plan_tiles(1000, 500).num_tiles   # 2x1 grid + thumbnail
    3
    """
    if width <= 0 or height <= 0:
        from .errors import ImageSizeError  # a BookError that is also a ValueError

        raise ImageSizeError(f"image size must be positive, got {width}x{height}")
    cols, rows = closest_grid(width, height, min_num, max_num, image_size)
    return TilePlan(cols, rows, thumbnail=use_thumbnail and cols * rows != 1)


def dynamic_tiles(
    image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True
) -> list[Image.Image]:
    """Cut a PIL image into InternVL2 tiles (row-major), thumbnail last.

    >>> from PIL import Image
    >>> len(dynamic_tiles(Image.new("RGB", (900, 450))))
    3
    """
    plan = plan_tiles(*image.size, min_num=min_num, max_num=max_num, image_size=image_size, use_thumbnail=use_thumbnail)
    resized = image.resize((plan.cols * image_size, plan.rows * image_size))
    tiles = []
    for r in range(plan.rows):
        for c in range(plan.cols):
            box = (c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size)
            tiles.append(resized.crop(box))
    if plan.thumbnail:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def image_to_pixel_values(
    image: Image.Image, max_num: int = 12, image_size: int = 448, use_thumbnail: bool = True, min_num: int = 1
):
    """Tiles -> normalised float tensor ``(num_tiles, 3, image_size, image_size)``.

    Bicubic resize to the tile size, ``ToTensor`` and ImageNet normalisation,
    as the official ``build_transform`` does.
    """
    import numpy as np
    import torch
    from PIL import Image

    image = image.convert("RGB")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for tile in dynamic_tiles(image, min_num, max_num, image_size, use_thumbnail):
        tile = tile.resize((image_size, image_size), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((t - mean) / std)
    return torch.stack(out)


def image_token_count(
    width: int,
    height: int,
    num_image_token: int = 256,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> int:
    """Number of ``<IMG_CONTEXT>`` tokens an image costs, plus ``<img>``/``</img>``.

    >>> image_token_count(448, 448)     # one tile, no thumbnail
    258
    """
    plan = plan_tiles(width, height, max_num=max_num, image_size=image_size, use_thumbnail=use_thumbnail)
    return plan.num_tiles * num_image_token + 2
