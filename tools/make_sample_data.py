"""Regenerate ``helpers/sample_data/clot_sample/`` from photos that installed packages ship.

The book's sample dataset has the layout of the real CLoT_cn_2000 course data
(``ex_cn.json`` + ``ex_images/``) plus our own ``train.json`` / ``eval.json``
split. Every image is a real photograph taken, offline, from a file that
scikit-image, scikit-learn or matplotlib ship in their wheels; where there are
fewer photos than samples we take several distinct crops of one photo, with
deliberately varied aspect ratios (tall, wide, square, very wide) so that the
book can show InternVL2's dynamic tiling on them. The captions are written by
hand for this book, in the style of CLoT's "脑洞大开的梗".

The result is committed; this script is only needed to change it. Running it
twice gives byte-identical JSON and Markdown (and, with the same Pillow,
identical JPEGs)::

    PYTHONPATH=. python tools/make_sample_data.py            # rewrite the folder
    PYTHONPATH=. python tools/make_sample_data.py --check    # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PROMPT = "<image>\n请你根据这张图片，讲一个脑洞大开的梗"
MAX_SIDE = 640
JPEG_QUALITY = 85
MIN_CAPTION, MAX_CAPTION = 8, 40


@dataclass(frozen=True)
class Source:
    """One photo file inside an installed package, with the credit the package gives."""

    package: str  # import name
    distribution: str  # name on PyPI
    path: str  # inside the package
    credit: str  # licence / credit exactly as far as the package documents it


@dataclass(frozen=True)
class Item:
    """One sample: output name, source key, crop box (left, top, right, bottom) or None, split, caption."""

    name: str
    source: str
    box: tuple[int, int, int, int] | None
    split: str
    caption: str


_SK = "scikit-image"
SOURCES: dict[str, Source] = {
    "astronaut": Source("skimage", _SK, "data/astronaut.png",
                        "Eileen Collins, NASA Great Images database; 'No known copyright restrictions, "
                        "released into the public domain' (docstring of `skimage.data.astronaut`)"),
    "chelsea": Source("skimage", _SK, "data/chelsea.png",
                      "Chelsea the cat; 'No copyright restrictions. CC0 by the photographer "
                      "(Stefan van der Walt)' (`skimage.data.chelsea`)"),
    "coffee": Source("skimage", _SK, "data/coffee.png",
                     "Courtesy of Pikolo Espresso Bar; 'No copyright restrictions. CC0 by the "
                     "photographer (Rachel Michetti)' (`skimage.data.coffee`)"),
    "rocket": Source("skimage", _SK, "data/rocket.jpg",
                     "DSCOVR on Falcon 9, SpaceX Photos on Flickr; 'captured by SpaceX and released "
                     "in the public domain' (`skimage.data.rocket`)"),
    "hubble": Source("skimage", _SK, "data/hubble_deep_field.jpg",
                     "Hubble eXtreme Deep Field, HubbleSite; 'captured by NASA and may be freely used "
                     "in the public domain' (`skimage.data.hubble_deep_field`)"),
    "ihc": Source("skimage", _SK, "data/ihc.png",
                  "Immunohistochemistry of colonic glands, Center for Microscopy And Molecular "
                  "Imaging (CMMI); 'No known copyright restrictions' "
                  "(`skimage.data.immunohistochemistry`)"),
    "camera": Source("skimage", _SK, "data/camera.png",
                     "'No copyright restrictions. CC0 by the photographer (Lav Varshney)' "
                     "(`skimage.data.camera`)"),
    "coins": Source("skimage", _SK, "data/coins.png",
                    "Greek coins from Pompeii, Brooklyn Museum Collection; 'No known copyright "
                    "restrictions' (`skimage.data.coins`)"),
    "text": Source("skimage", _SK, "data/text.png",
                   "Wikipedia File:Corner.png; 'No known copyright restrictions, released into the "
                   "public domain' (`skimage.data.text`)"),
    "grass": Source("skimage", _SK, "data/grass.png",
                    "linolafett on DeviantArt, 'licensed under the Creative Commons CC0 License' "
                    "(`skimage.data.grass`)"),
    "gravel": Source("skimage", _SK, "data/gravel.png",
                     "CC0Textures (Gravel04), 'licensed under the Creative Commons CC0 License' "
                     "(`skimage.data.gravel`)"),
    "brick": Source("skimage", _SK, "data/brick.png",
                    "CC0Textures (Bricks25), 'licensed under the Creative Commons CC0 License' "
                    "(`skimage.data.brick`)"),
    "clock": Source("skimage", _SK, "data/clock_motion.png",
                    "Motion-blurred wall clock; 'Released into the public domain by the photographer "
                    "(Stefan van der Walt)' (`skimage.data.clock`)"),
    "retina": Source("skimage", _SK, "data/retina.jpg",
                     "Fundus photograph of a normal left eye, Mikael Häggström via Wikimedia Commons; "
                     "'Creative Commons CC0 1.0 Universal Public Domain Dedication' "
                     "(`skimage.data.retina`)"),
    "china": Source("sklearn", "scikit-learn", "datasets/images/china.jpg",
                    "danielbuechele on Flickr, CC BY 2.0, 'Retrieved 21st August, 2011 ... by Robert "
                    "Layton' (`sklearn/datasets/images/README.txt`)"),
    "flower": Source("sklearn", "scikit-learn", "datasets/images/flower.jpg",
                     "vultilion on Flickr, CC BY 2.0 (`sklearn/datasets/images/README.txt`; its "
                     "attribution line names danielbuechele, its link vultilion)"),
    "grace_hopper": Source("matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                           "Official U.S. Navy portrait of Commodore Grace M. Hopper (public domain as "
                           "a work of the U.S. federal government); matplotlib ships it without a "
                           "licence note (`mpl-data/sample_data/README.txt` only names its purpose)"),
}

ITEMS: list[Item] = [
    Item("astronaut", "astronaut", None, "train", "妈我上天了！这身橙色是为了在宇宙里也能被外卖小哥找到"),
    Item("astronaut_face", "astronaut", (140, 0, 320, 300), "train", "领导问我加班累不累，我露出了标准的宇航员微笑"),
    Item("astronaut_shuttle", "astronaut", (345, 0, 475, 300), "train", "别看我只是个模型，我的梦想可是真飞机"),
    Item("astronaut_helmet", "astronaut", (270, 330, 512, 512), "train", "头盔擦得太亮，照出了我下周一的脸"),
    Item("chelsea", "chelsea", None, "train", "我没有在盯着你的鱼，我在思考猫生"),
    Item("chelsea_eyes", "chelsea", (100, 70, 370, 170), "train", "当你说“最后一口给我吃”的时候，我的眼神"),
    Item("chelsea_nose", "chelsea", (180, 170, 340, 300), "eval", "鼻子粉粉的，脾气可不是"),
    Item("coffee", "coffee", None, "train", "打工人的续命药水，已为您满上"),
    Item("coffee_spoon", "coffee", (310, 60, 430, 330), "eval", "我是勺子，我在咖啡界的地位就是：搅局"),
    Item("coffee_crema", "coffee", (180, 20, 420, 200), "train", "俯视一杯浓缩：像极了我深不见底的待办清单"),
    Item("rocket", "rocket", None, "train", "周一早上的我：全身冒烟，但还是得出发"),
    Item("rocket_body", "rocket", (280, 110, 370, 427), "train", "细长的身材，远大的目标，说的就是我"),
    Item("rocket_tower", "rocket", (0, 0, 100, 427), "train", "我是发射塔，每次都是我送别，却从没人送我"),
    Item("rocket_lights", "rocket", (0, 330, 640, 427), "eval", "底下这排灯：我们不是星星，但我们也想上镜"),
    Item("hubble_deep_field", "hubble", None, "train", "宇宙：这么多星系，没有一个回你消息"),
    Item("hubble_galaxy", "hubble", (40, 320, 210, 490), "eval", "我只是一个小小的螺旋，但我卷起来很专业"),
    Item("hubble_strip", "hubble", (0, 430, 1000, 530), "train", "截了一条宇宙当手机壁纸，太长了屏幕装不下"),
    Item("ihc", "ihc", None, "train", "别流口水，这不是焦糖蛋糕，是显微镜下的肠道"),
    Item("ihc_gland", "ihc", (240, 290, 400, 500), "train", "细胞们围成一圈开会，议题是今天谁背锅"),
    Item("camera", "camera", None, "eval", "别动，这张照片我要构图三小时"),
    Item("camera_tripod", "camera", (200, 200, 420, 512), "train", "三条腿的我，站得比你稳"),
    Item("coins", "coins", None, "train", "古希腊的零钱包，两千年了还是没攒够首付"),
    Item("coins_big", "coins", (300, 148, 384, 232), "train", "我是庞贝出土的硬币，火山都没能把我花掉"),
    Item("text", "text", None, "train", "数学草稿纸的真相：写着写着就斜了"),
    Item("grass", "grass", None, "train", "草：我就是那个被说了一万遍的字"),
    Item("gravel", "gravel", None, "train", "碎石路：每一颗都硌脚，但没有一颗认错"),
    Item("brick", "brick", None, "train", "我只是墙上的一块砖，哪里需要往哪搬"),
    Item("clock", "clock", None, "train", "时间过得太快，连钟都拍糊了"),
    Item("retina", "retina", None, "train", "医生说我眼里有光，原来是拍眼底的闪光灯"),
    Item("retina_disc", "retina", (60, 480, 400, 820), "train", "视神经盘：眼睛里的交通枢纽，血管都从我这出发"),
    Item("retina_macula", "retina", (430, 600, 980, 820), "eval", "中间那块暗的叫黄斑，是我刷手机最用力的地方"),
    Item("china", "china", None, "train", "塔：我站了几百年，就为了等你拍张游客照"),
    Item("china_pagoda", "china", (60, 20, 360, 427), "train", "层层叠叠的屋檐，是古人的高层住宅"),
    Item("china_lake", "china", (330, 200, 640, 280), "train", "湖上的小船：我们只是路过，不收门票"),
    Item("flower", "flower", None, "eval", "花开得这么规整，强迫症看了都说好"),
    Item("flower_bud", "flower", (280, 360, 460, 427), "train", "我也是花，只是还没轮到我C位出道"),
    Item("flower_center", "flower", (230, 130, 390, 290), "train", "从花心往外卷，一层比一层卷"),
    Item("grace_hopper", "grace_hopper", None, "train", "我找到的第一个bug，真的是一只虫子"),
    Item("grace_hopper_hat", "grace_hopper", (150, 20, 380, 130), "eval", "帽子上的金线，是我写代码熬出来的"),
    Item("grace_hopper_ribbons", "grace_hopper", (60, 470, 470, 545), "train", "胸前的勋章条：每一条都是一次上线没出事故"),
]

EXCLUDED = (
    "Not used: `skimage` `moon.png`, `page.png` and `motorcycle_left.png` (their docstrings give no "
    "licence), `cell.png` (a quantitative phase image, not a photograph), `microaneurysms.png` "
    "(102 px), and the synthetic `horse`, `phantom`, `color`, `chessboard_*`, `logo` images; "
    "matplotlib's `Minduka_Present_Blue_Pack.png` and `logo2.png` (drawings)."
)


def source_file(source: Source) -> Path:
    """Path of a source photo inside its installed package.

    >>> source_file(SOURCES["chelsea"]).name
    'chelsea.png'
    """
    path = Path(str(importlib.resources.files(source.package) / source.path))
    if not path.is_file():
        raise SystemExit(f"{path} is missing: install {source.distribution} (pip install {source.distribution})")
    return path


def make_image(item: Item) -> Image.Image:
    """Load, crop and downscale one sample so that its longest side is at most MAX_SIDE.

    >>> make_image(ITEMS[0]).size
    (512, 512)
    """
    with Image.open(source_file(SOURCES[item.source])) as raw:
        image = raw.convert("RGB")
    if item.box is not None:
        left, top, right, bottom = item.box
        if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
            raise SystemExit(f"{item.name}: crop box {item.box} is outside the {image.size} photo")
        image = image.crop(item.box)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    return image


def record(item: Item) -> dict:
    """The CLoT-style record of one sample.

    >>> record(ITEMS[0])["image"]
    'ex_images/astronaut.jpg'
    """
    return {
        "id": item.name,
        "image": f"ex_images/{item.name}.jpg",
        "conversations": [
            {"from": "human", "value": PROMPT},
            {"from": "gpt", "value": item.caption},
        ],
    }


def check_items(items: list[Item]) -> None:
    """Refuse duplicate names or captions and captions outside 8-40 characters."""
    names = [i.name for i in items]
    captions = [i.caption for i in items]
    if len(set(names)) != len(names) or len(set(captions)) != len(captions):
        raise SystemExit("names and captions must be unique")
    for item in items:
        if not MIN_CAPTION <= len(item.caption) <= MAX_CAPTION:
            raise SystemExit(f"{item.name}: caption has {len(item.caption)} characters, want 8-40")
        if item.split not in ("train", "eval"):
            raise SystemExit(f"{item.name}: split must be train or eval")


def dump_json(records: list[dict]) -> str:
    """Stable, human-readable JSON (UTF-8, 2-space indent, trailing newline)."""
    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def sources_markdown(items: list[Item], sizes: dict[str, tuple[int, int]]) -> str:
    """The SOURCES.md table: file, package path, crop box, size, split, licence/credit, caption."""
    versions = {s.distribution: importlib.metadata.version(s.distribution) for s in SOURCES.values()}
    lines = [
        "# Sources of the sample dataset",
        "",
        "A tiny dataset in the layout of CLoT_cn_2000 (`ex_cn.json` + `ex_images/`), with our own",
        f"`train.json` ({sum(i.split == 'train' for i in items)} records) and `eval.json` "
        f"({sum(i.split == 'eval' for i in items)} records); `ex_cn.json` is train followed by eval.",
        "It is generated by `tools/make_sample_data.py` (which holds the captions) from photos that",
        "installed packages ship offline: " + ", ".join(f"{d} {v}" for d, v in sorted(versions.items())) + ".",
        "",
        f"There are {len(SOURCES)} distinct photographs and {len(items)} images: the others are crops of",
        "those photos, each of a different region and with a deliberately different aspect ratio",
        "(tall, wide, square, very wide) to exercise InternVL2's dynamic tiling. Because of that, some",
        "eval images are crops of photos that also appear in train: this set is for teaching the",
        "pipeline, not for measuring generalisation. Images are converted to RGB, downscaled so the",
        f"longest side is at most {MAX_SIDE} px (Lanczos) and saved as JPEG quality {JPEG_QUALITY}.",
        "Crop boxes are `(left, top, right, bottom)` in pixels of the source photo.",
        "",
        "The captions are original jokes written for this book in the style of CLoT's",
        "\"脑洞大开的梗\"; they are released with the book.",
        "",
        EXCLUDED,
        "",
        "| file | split | package: path | crop box | size | licence / credit (as the package documents it) | caption |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for item in items:
        src = SOURCES[item.source]
        box = "full photo" if item.box is None else f"crop of `{Path(src.path).name}` {item.box}"
        w, h = sizes[item.name]
        lines.append(
            f"| `ex_images/{item.name}.jpg` | {item.split} | {src.distribution}: `{src.package}/{src.path}` "
            f"| {box} | {w}x{h} | {src.credit} | {item.caption} |"
        )
    return "\n".join(lines) + "\n"


def build(out_dir: Path, items: list[Item] = ITEMS) -> None:
    """Write the whole dataset folder into ``out_dir`` (replacing it)."""
    check_items(items)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "ex_images").mkdir(parents=True)
    sizes = {}
    for item in items:
        image = make_image(item)
        sizes[item.name] = image.size
        image.save(out_dir / "ex_images" / f"{item.name}.jpg", "JPEG", quality=JPEG_QUALITY)
    train = [record(i) for i in items if i.split == "train"]
    evaluation = [record(i) for i in items if i.split == "eval"]
    (out_dir / "train.json").write_text(dump_json(train), encoding="utf-8")
    (out_dir / "eval.json").write_text(dump_json(evaluation), encoding="utf-8")
    (out_dir / "ex_cn.json").write_text(dump_json(train + evaluation), encoding="utf-8")
    (out_dir / "SOURCES.md").write_text(sources_markdown(items, sizes), encoding="utf-8")


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths whose bytes differ between two dataset folders (or exist in one only)."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {
        p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return sorted(str(n) for n in names
                  if not ((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes()))


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the sample folder, or ``--check`` it against a fresh build."""
    from helpers import SAMPLE_DATA_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DATA_DIR)
    parser.add_argument("--check", action="store_true", help="compare with a fresh build, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "clot_sample"
            build(fresh)
            diff = differences(fresh, args.out)
        print("up to date" if not diff else "differs: " + ", ".join(diff))
        return int(bool(diff))
    build(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(ITEMS)} images to {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
