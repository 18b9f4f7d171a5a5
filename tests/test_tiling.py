"""helpers.tiling reproduces InternVL2's dynamic tiling rule."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import tiling

# (width, height, max_num) -> (cols, rows) worked out by hand from the official rule
HAND_CASES = [
    ((448, 448, 12), (1, 1)),
    ((896, 448, 12), (2, 1)),
    ((448, 896, 12), (1, 2)),
    ((640, 480, 12), (4, 3)),  # 4:3 exactly -> 12 tiles, even for a small photo
    ((1000, 100, 12), (10, 1)),  # 10:1 exists exactly
    ((512, 512, 12), (1, 1)),  # ties (1:1, 2:2, 3:3) -> larger grid only if the image fills > half of it
    ((1344, 1344, 12), (3, 3)),
]


@pytest.mark.parametrize("size,grid", HAND_CASES)
def test_hand_worked_grids(size, grid):
    w, h, max_num = size
    assert tiling.closest_grid(w, h, max_num=max_num) == grid


def test_six_tile_cap_changes_the_grid():
    # 4:3 with max 6: candidates with cols*rows<=6; 3:2 (1.5) is closest to 1.333
    assert tiling.closest_grid(640, 480, max_num=6) == (3, 2)


@pytest.mark.parametrize(
    "w,h",
    [
        (448, 448),
        (500, 300),
        (300, 500),
        (640, 480),
        (1920, 1080),
        (100, 1000),
        (1000, 100),
        (333, 777),
        (1344, 896),
        (2000, 2000),
        (50, 60),
    ],
)
@pytest.mark.parametrize("max_num", [1, 6, 12])
def test_matches_the_official_implementation(w, h, max_num):
    """Same tiles as InternVL's dynamic_preprocess (as copied into XTuner)."""
    xt = pytest.importorskip("xtuner.dataset.internvl_dataset")
    img = Image.new("RGB", (w, h))
    official = xt.dynamic_preprocess(img, 1, max_num, 448, True)
    ours = tiling.dynamic_tiles(img, 1, max_num, 448, True)
    assert len(ours) == len(official)
    assert [t.size for t in ours] == [t.size for t in official]
    assert tiling.plan_tiles(w, h, max_num=max_num).num_tiles == len(official)


def test_tiles_are_cut_row_major_with_thumbnail_last():
    img = Image.new("RGB", (896, 448))
    img.paste((255, 0, 0), (0, 0, 448, 448))  # left half red
    img.paste((0, 0, 255), (448, 0, 896, 448))  # right half blue
    tiles = tiling.dynamic_tiles(img, max_num=12)
    assert len(tiles) == 3
    assert tiles[0].getpixel((10, 10)) == (255, 0, 0)
    assert tiles[1].getpixel((10, 10)) == (0, 0, 255)
    assert tiles[2].size == (448, 448)


def test_pixel_values_shape_and_normalisation():
    pv = tiling.image_to_pixel_values(Image.new("RGB", (448, 448), (124, 116, 104)))
    assert pv.shape == (1, 3, 448, 448)
    assert pv.abs().max() < 0.05  # ImageNet mean colour maps to ~0


def test_image_token_count_uses_tiles_and_markers():
    assert tiling.image_token_count(448, 448, num_image_token=256) == 256 + 2
    assert tiling.image_token_count(896, 448, num_image_token=64) == 3 * 64 + 2


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        tiling.plan_tiles(0, 10)
