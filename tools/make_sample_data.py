"""Regenerate ``helpers/sample_data/clot_sample/`` from photos that packages ship.

The book's sample dataset has the layout of the real CLoT_cn_2000 course data
(``ex_cn.json`` + ``ex_images/``) plus our own ``train.json`` / ``eval.json``
split. The captions are written by hand for this book, in the style of CLoT's
"脑洞大开的梗".

* **train** (``ITEMS``): real photographs taken, offline, from files that
  scikit-image, scikit-learn or matplotlib ship in their wheels; where there
  are fewer photos than samples we take several distinct crops of one photo,
  with deliberately varied aspect ratios (tall, wide, square, very wide) so
  that the book can show InternVL2's dynamic tiling on them. These images are
  regenerated from the installed wheels on every run.
* **eval** (``HELDOUT``): held-out photographs that are *different photos*
  from every training image (other photographers, other scenes; no crop of a
  training photo), taken from wallpaper packages of Debian 12. Debian packages
  are not Python dependencies, so the downscaled JPEGs are committed and an
  ordinary run copies them unchanged; ``--debs DIR`` re-derives them from the
  packages (``apt-get download PKG=VERSION`` into DIR, then the file is read
  out of the ``.deb`` with ``dpkg-deb --fsys-tarfile``), which needs a Debian
  machine that reaches the Debian archive. ``SOURCES.md`` lists, per file, the
  package, version, path, author, licence and the command that re-derives it.

The result is committed; this script is only needed to change it. Running it
twice gives byte-identical JSON and Markdown (and, with the same Pillow,
identical JPEGs)::

    PYTHONPATH=. python tools/make_sample_data.py            # rewrite the folder
    PYTHONPATH=. python tools/make_sample_data.py --check    # exit 1 if it differs
    PYTHONPATH=. python tools/make_sample_data.py --debs /tmp/debs           # re-derive the eval JPEGs too
    PYTHONPATH=. python tools/make_sample_data.py --debs /tmp/debs --check   # ... and compare them
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.internvl import COURSE_PROMPT as PROMPT

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
class DebSource:
    """One photo file inside a Debian 12 package, with author and licence from its copyright file."""

    package: str  # Debian binary package
    version: str  # exact version, so that ``apt-get download PKG=VERSION`` fetches the same bytes
    path: str  # absolute path of the file once the package is installed
    author: str
    licence: str  # SPDX-style name, as the package's copyright file (or metadata) gives it
    credit: str  # where the author and licence are stated

    @property
    def deb(self) -> str:
        """File name of the ``.deb`` that ``apt-get download`` writes (all these are arch ``all``;
        an epoch's colon is written ``%3a``)."""
        return f"{self.package}_{self.version.replace(':', '%3a')}_all.deb"

    def command(self, out: str) -> str:
        """The shell command that extracts the original photo into ``out`` in the current folder.

        >>> DEB_SOURCES["ladybird"].command("ladybird.orig.jpg")  # doctest: +NORMALIZE_WHITESPACE
        'apt-get download mate-backgrounds=1.26.0-1 && dpkg-deb --fsys-tarfile mate-backgrounds_1.26.0-1_all.deb
         | tar -xO ./usr/share/backgrounds/mate/nature/LadyBird.jpg > ladybird.orig.jpg'
        """
        return (
            f"apt-get download {self.package}={self.version} && dpkg-deb --fsys-tarfile {self.deb} "
            f"| tar -xO .{self.path} > {out}"
        )


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
    "astronaut": Source(
        "skimage",
        _SK,
        "data/astronaut.png",
        "Eileen Collins, NASA Great Images database; 'No known copyright restrictions, "
        "released into the public domain' (docstring of `skimage.data.astronaut`)",
    ),
    "chelsea": Source(
        "skimage",
        _SK,
        "data/chelsea.png",
        "Chelsea the cat; 'No copyright restrictions. CC0 by the photographer "
        "(Stefan van der Walt)' (`skimage.data.chelsea`)",
    ),
    "coffee": Source(
        "skimage",
        _SK,
        "data/coffee.png",
        "Courtesy of Pikolo Espresso Bar; 'No copyright restrictions. CC0 by the "
        "photographer (Rachel Michetti)' (`skimage.data.coffee`)",
    ),
    "rocket": Source(
        "skimage",
        _SK,
        "data/rocket.jpg",
        "DSCOVR on Falcon 9, SpaceX Photos on Flickr; 'captured by SpaceX and released "
        "in the public domain' (`skimage.data.rocket`)",
    ),
    "hubble": Source(
        "skimage",
        _SK,
        "data/hubble_deep_field.jpg",
        "Hubble eXtreme Deep Field, HubbleSite; 'captured by NASA and may be freely used "
        "in the public domain' (`skimage.data.hubble_deep_field`)",
    ),
    "ihc": Source(
        "skimage",
        _SK,
        "data/ihc.png",
        "Immunohistochemistry of colonic glands, Center for Microscopy And Molecular "
        "Imaging (CMMI); 'No known copyright restrictions' "
        "(`skimage.data.immunohistochemistry`)",
    ),
    "camera": Source(
        "skimage",
        _SK,
        "data/camera.png",
        "'No copyright restrictions. CC0 by the photographer (Lav Varshney)' (`skimage.data.camera`)",
    ),
    "coins": Source(
        "skimage",
        _SK,
        "data/coins.png",
        "Greek coins from Pompeii, Brooklyn Museum Collection; 'No known copyright "
        "restrictions' (`skimage.data.coins`)",
    ),
    "text": Source(
        "skimage",
        _SK,
        "data/text.png",
        "Wikipedia File:Corner.png; 'No known copyright restrictions, released into the "
        "public domain' (`skimage.data.text`)",
    ),
    "grass": Source(
        "skimage",
        _SK,
        "data/grass.png",
        "linolafett on DeviantArt, 'licensed under the Creative Commons CC0 License' (`skimage.data.grass`)",
    ),
    "gravel": Source(
        "skimage",
        _SK,
        "data/gravel.png",
        "CC0Textures (Gravel04), 'licensed under the Creative Commons CC0 License' (`skimage.data.gravel`)",
    ),
    "brick": Source(
        "skimage",
        _SK,
        "data/brick.png",
        "CC0Textures (Bricks25), 'licensed under the Creative Commons CC0 License' (`skimage.data.brick`)",
    ),
    "clock": Source(
        "skimage",
        _SK,
        "data/clock_motion.png",
        "Motion-blurred wall clock; 'Released into the public domain by the photographer "
        "(Stefan van der Walt)' (`skimage.data.clock`)",
    ),
    "retina": Source(
        "skimage",
        _SK,
        "data/retina.jpg",
        "Fundus photograph of a normal left eye, Mikael Häggström via Wikimedia Commons; "
        "'Creative Commons CC0 1.0 Universal Public Domain Dedication' "
        "(`skimage.data.retina`)",
    ),
    "china": Source(
        "sklearn",
        "scikit-learn",
        "datasets/images/china.jpg",
        "danielbuechele on Flickr, CC BY 2.0, 'Retrieved 21st August, 2011 ... by Robert "
        "Layton' (`sklearn/datasets/images/README.txt`)",
    ),
    "flower": Source(
        "sklearn",
        "scikit-learn",
        "datasets/images/flower.jpg",
        "vultilion on Flickr, CC BY 2.0 (`sklearn/datasets/images/README.txt`; its "
        "attribution line names danielbuechele, its link vultilion)",
    ),
    "grace_hopper": Source(
        "matplotlib",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "Official U.S. Navy portrait of Commodore Grace M. Hopper (public domain as "
        "a work of the U.S. federal government); matplotlib ships it without a "
        "licence note (`mpl-data/sample_data/README.txt` only names its purpose)",
    ),
}

# every training image comes from SOURCES (pip wheels); every held-out image from DEB_SOURCES
ITEMS: list[Item] = [
    Item("astronaut", "astronaut", None, "train", "妈我上天了！这身橙色是为了在宇宙里也能被外卖小哥找到"),
    Item("astronaut_face", "astronaut", (140, 0, 320, 300), "train", "领导问我加班累不累，我露出了标准的宇航员微笑"),
    Item("astronaut_shuttle", "astronaut", (345, 0, 475, 300), "train", "别看我只是个模型，我的梦想可是真飞机"),
    Item("astronaut_helmet", "astronaut", (270, 330, 512, 512), "train", "头盔擦得太亮，照出了我下周一的脸"),
    Item("chelsea", "chelsea", None, "train", "我没有在盯着你的鱼，我在思考猫生"),
    Item("chelsea_eyes", "chelsea", (100, 70, 370, 170), "train", "当你说“最后一口给我吃”的时候，我的眼神"),
    Item("coffee", "coffee", None, "train", "打工人的续命药水，已为您满上"),
    Item("coffee_crema", "coffee", (180, 20, 420, 200), "train", "俯视一杯浓缩：像极了我深不见底的待办清单"),
    Item("rocket", "rocket", None, "train", "周一早上的我：全身冒烟，但还是得出发"),
    Item("rocket_body", "rocket", (280, 110, 370, 427), "train", "细长的身材，远大的目标，说的就是我"),
    Item("rocket_tower", "rocket", (0, 0, 100, 427), "train", "我是发射塔，每次都是我送别，却从没人送我"),
    Item("hubble_deep_field", "hubble", None, "train", "宇宙：这么多星系，没有一个回你消息"),
    Item("hubble_strip", "hubble", (0, 430, 1000, 530), "train", "截了一条宇宙当手机壁纸，太长了屏幕装不下"),
    Item("ihc", "ihc", None, "train", "别流口水，这不是焦糖蛋糕，是显微镜下的肠道"),
    Item("ihc_gland", "ihc", (240, 290, 400, 500), "train", "细胞们围成一圈开会，议题是今天谁背锅"),
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
    Item("china", "china", None, "train", "塔：我站了几百年，就为了等你拍张游客照"),
    Item("china_pagoda", "china", (60, 20, 360, 427), "train", "层层叠叠的屋檐，是古人的高层住宅"),
    Item("china_lake", "china", (330, 200, 640, 280), "train", "湖上的小船：我们只是路过，不收门票"),
    Item("flower_bud", "flower", (280, 360, 460, 427), "train", "我也是花，只是还没轮到我C位出道"),
    Item("flower_center", "flower", (230, 130, 390, 290), "train", "从花心往外卷，一层比一层卷"),
    Item("grace_hopper", "grace_hopper", None, "train", "我找到的第一个bug，真的是一只虫子"),
    Item(
        "grace_hopper_ribbons", "grace_hopper", (60, 470, 470, 545), "train", "胸前的勋章条：每一条都是一次上线没出事故"
    ),
]

_LOMIRI_CR = "`/usr/share/doc/{pkg}/copyright`"
_MATE_CR = "`/usr/share/doc/mate-backgrounds/copyright`"
_PLASMA_CR = "the wallpaper's `metadata.json`; the package's copyright file says GPL-2+, KDE Visual Design Group"
_L16, _L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"
_PLASMA = "plasma-workspace-wallpapers"


def _lomiri(pkg: str, name: str, author: str, licence: str) -> DebSource:
    return DebSource(pkg, "20.04.0-2", f"/usr/share/backgrounds/{name}", author, licence, _LOMIRI_CR.format(pkg=pkg))


def _plasma(name: str, author: str) -> DebSource:
    return DebSource(
        _PLASMA,
        "4:5.27.5-2",
        f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg",
        author,
        "LGPL-3.0",
        _PLASMA_CR,
    )


def _mate(name: str, author: str) -> DebSource:
    return DebSource(
        "mate-backgrounds",
        "1.26.0-1",
        f"/usr/share/backgrounds/mate/nature/{name}",
        author,
        "GPL-2.0-or-later",
        _MATE_CR,
    )


DEB_SOURCES: dict[str, DebSource] = {
    "friends": _lomiri(_L16, "friends_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    "wine": _lomiri(_L16, "Wine_by_Jakkub_Mede.jpg", "Jakub Mede", "CC-BY-4.0"),
    "fig": _lomiri(_L16, "Picture_0B_by_freespace.jpg", 'Trevor "Freespace"', "CC-BY-4.0"),
    "brushes": _lomiri(_L16, "Picture_1A_by_freespace.jpg", 'Trevor "Freespace"', "CC-BY-4.0"),
    "free": _lomiri(_L16, "free_by_Peter_Nerlich.jpg", "Peter Nerlich", "CC-BY-SA-4.0"),
    "kleiber": _lomiri(_L20, "Kleiber_by_Lukas_Baubkus.jpg", "Lukas Baubkus", "CC-BY-SA-3.0"),
    "seeding": _lomiri(_L16, "seeding_by_Clements_Engelhardt.jpg", "Clemens Engelhardt", "CC0-1.0"),
    "picos": _lomiri(_L16, "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    "life": _lomiri(_L16, "life_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0"),
    "ladybird": _mate("LadyBird.jpg", "Charles Barbin"),
    "aqua": _mate("Aqua.jpg", "Charles Barbin"),
    "evening_glow": _plasma("EveningGlow", "Ian Hex"),
    "kite": _plasma("Kite", "Risto Saukonpää"),
    "fallen_leaf": _plasma("FallenLeaf", "Martin Klapetek"),
}

# the held-out split: other photos, other photographers, other scenes than every training image
HELDOUT: list[Item] = [
    Item("dogs_window", "friends", None, "eval", "上下铺的兄弟，每天准时趴在窗口等你下班"),
    Item("wine_drum", "wine", None, "eval", "红酒配手鼓：喝到第二杯，我就是乐队主唱"),
    Item("fig_bowl", "fig", None, "eval", "半个无花果躺在大红碗里，孤独得像周末加班的我"),
    Item("paint_brushes", "brushes", (140, 0, 1214, 1074), "eval", "老板要的五彩斑斓的黑，我们几把刷子真的尽力了"),
    Item("toy_bird", "free", None, "eval", "这只鸟挂在灯底下，一辈子都在假装飞翔"),
    Item("nuthatch", "kleiber", None, "eval", "躲在树后面探个头：领导走了没？我能下班了吗"),
    Item("dandelions", "seeding", None, "eval", "蒲公英：风一吹就散，像极了发完年终奖的同事们"),
    Item("mountain_path", "picos", None, "eval", "通往山顶的小路，和我的减肥计划一样：看着近，走着远"),
    Item("forest_stream", "life", None, "eval", "小溪流过石头从不抱怨，我周一上班却抱怨了一路"),
    Item("ladybird", "ladybird", None, "eval", "瓢虫爬上叶尖：再往前一步，就是我的人生巅峰"),
    Item("water_drop", "aqua", (0, 560, 2560, 1280), "eval", "一滴水落下溅起一顶皇冠，我摸鱼只溅起了老板的怒火"),
    Item("evening_boats", "evening_glow", None, "eval", "小船们已经停好了，下班时间谁也别想叫我们出海"),
    Item("kite", "kite", (1410, 0, 1930, 1600), "eval", "风筝飞得再高，线还在别人手里，说的就是打工人"),
    Item("fallen_leaf", "fallen_leaf", None, "eval", "秋天的落叶：我不是掉下来的，我是主动躺平的"),
]

ALL_ITEMS: list[Item] = ITEMS + HELDOUT

EXCLUDED = (
    "Not used: `skimage` `moon.png`, `page.png` and `motorcycle_left.png` (their docstrings give no "
    "licence), `cell.png` (a quantitative phase image, not a photograph), `microaneurysms.png` "
    "(102 px), and the synthetic `horse`, `phantom`, `color`, `chessboard_*`, `logo` images; "
    "matplotlib's `Minduka_Present_Blue_Pack.png` and `logo2.png` (drawings)."
)

# the committed sample folder, whose held-out JPEGs an ordinary run copies
COMMITTED_DIR = Path(__file__).resolve().parents[1] / "helpers" / "sample_data" / "clot_sample"


def source_file(source: Source) -> Path:
    """Path of a source photo inside its installed package.

    >>> source_file(SOURCES["chelsea"]).name
    'chelsea.png'
    """
    path = Path(str(importlib.resources.files(source.package) / source.path))
    if not path.is_file():
        raise SystemExit(f"{path} is missing: install {source.distribution} (pip install {source.distribution})")
    return path


def deb_photo(source: DebSource, cache: Path) -> bytes:
    """The original photo's bytes, read out of its ``.deb`` (downloaded into ``cache`` if not there).

    Runs ``apt-get download PKG=VERSION`` (Debian's ordinary client; as root it warns that the
    download is unsandboxed) and reads the file with ``dpkg-deb --fsys-tarfile``.
    """
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / source.deb
    if not deb.is_file():
        try:
            subprocess.run(["apt-get", "download", f"{source.package}={source.version}"], cwd=cache, check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            raise SystemExit(
                f"cannot download {source.package}={source.version} ({err}); "
                f"run `apt-get update` on a Debian 12 machine, or put {source.deb} in {cache}"
            ) from err
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile("." + source.path)
        if member is None:
            raise SystemExit(f"{source.path} is not a regular file in {deb}")
        return member.read()


def downscale(image: Image.Image, item: Item) -> Image.Image:
    """Convert to RGB, crop to ``item.box`` if any, and downscale so the longest side is at most MAX_SIDE."""
    image = image.convert("RGB")
    if item.box is not None:
        left, top, right, bottom = item.box
        if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
            raise SystemExit(f"{item.name}: crop box {item.box} is outside the {image.size} photo")
        image = image.crop(item.box)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    return image


def make_image(item: Item, debs: Path | None = None) -> Image.Image:
    """Load, crop and downscale one sample so that its longest side is at most MAX_SIDE.

    Training items come from installed wheels; a held-out item needs ``debs``, the folder
    that caches (or receives) its Debian package.

    >>> make_image(ITEMS[0]).size
    (512, 512)
    """
    if item.source in SOURCES:
        with Image.open(source_file(SOURCES[item.source])) as raw:
            return downscale(raw, item)
    if debs is None:
        raise SystemExit(f"{item.name}: a held-out image is re-derived only with --debs DIR")
    with Image.open(io.BytesIO(deb_photo(DEB_SOURCES[item.source], debs))) as raw:
        return downscale(raw, item)


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
    """Refuse duplicate names or captions, captions outside 8-40 characters, and a held-out
    item whose photo is also a training source (or a training item from a Debian package)."""
    names = [i.name for i in items]
    captions = [i.caption for i in items]
    if len(set(names)) != len(names) or len(set(captions)) != len(captions):
        raise SystemExit("names and captions must be unique")
    for item in items:
        if not MIN_CAPTION <= len(item.caption) <= MAX_CAPTION:
            raise SystemExit(f"{item.name}: caption has {len(item.caption)} characters, want 8-40")
        if item.split not in ("train", "eval"):
            raise SystemExit(f"{item.name}: split must be train or eval")
        if (item.split == "train") != (item.source in SOURCES) or item.source not in {**SOURCES, **DEB_SOURCES}:
            raise SystemExit(f"{item.name}: train items come from SOURCES, eval items from DEB_SOURCES")
    train_sources = {i.source for i in items if i.split == "train"}
    if train_sources & {i.source for i in items if i.split == "eval"}:
        raise SystemExit("an eval image must not share its source photo with a training image")


def dump_json(records: list[dict]) -> str:
    """Stable, human-readable JSON (UTF-8, 2-space indent, trailing newline)."""
    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def sources_markdown(items: list[Item], sizes: dict[str, tuple[int, int]]) -> str:
    """SOURCES.md: the training table (wheel path, crop box, size, credit, caption), then the
    held-out table (Debian package, version, path, author, licence) and the re-derive commands."""
    train = [i for i in items if i.split == "train"]
    heldout = [i for i in items if i.split == "eval"]
    used = {i.source for i in train}
    versions = {s.distribution: importlib.metadata.version(s.distribution) for k, s in SOURCES.items() if k in used}
    debs = sorted({(DEB_SOURCES[i.source].package, DEB_SOURCES[i.source].version) for i in heldout})
    lines = [
        "# Sources of the sample dataset",
        "",
        "A tiny dataset in the layout of CLoT_cn_2000 (`ex_cn.json` + `ex_images/`), with our own",
        f"`train.json` ({len(train)} records) and `eval.json` ({len(heldout)} records); `ex_cn.json` "
        "is train followed by eval.",
        "It is generated by `tools/make_sample_data.py` (which holds the captions). Images are converted",
        f"to RGB, downscaled so the longest side is at most {MAX_SIDE} px (Lanczos) and saved as JPEG",
        f"quality {JPEG_QUALITY}. Crop boxes are `(left, top, right, bottom)` in pixels of the source photo.",
        "",
        "The captions are original jokes written for this book in the style of CLoT's",
        '"脑洞大开的梗"; they are released with the book.',
        "",
        "## Held-out property",
        "",
        f"The {len(heldout)} eval images are **held out**: {len({i.source for i in heldout})} photographs "
        "that are none of the training",
        "photos, no crop of one, and not a source of one. They come from other packages (Debian wallpaper",
        "packages; every training image comes from a Python wheel) and other photographers, and none",
        "shows the same scene or the same object as a training photo. `tests/test_data.py`",
        "checks it on the committed files: the two splits share no file name, no source, no file hash, and",
        "no image whose 16x16 perceptual hash is close to another's. A model fine-tuned on `train.json` has",
        "therefore never seen the eval photos, which makes the eval split a (very small) test of",
        "generalisation rather than of recall.",
        "",
        "## Training images",
        "",
        f"{len(train)} images from {len(used)} distinct photographs that installed packages ship offline: "
        + ", ".join(f"{d} {v}" for d, v in sorted(versions.items()))
        + ".",
        "The images that are not full photos are crops of those photos, each of a different region and with",
        "a deliberately different aspect ratio (tall, wide, square, very wide) to exercise InternVL2's",
        "dynamic tiling. They are regenerated from the installed wheels on every run of the tool.",
        "",
        EXCLUDED,
        "",
        "| file | split | package: path | crop box | size | licence / credit (as the package documents it) | caption |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for item in train:
        src = SOURCES[item.source]
        box = "full photo" if item.box is None else f"crop of `{Path(src.path).name}` {item.box}"
        w, h = sizes[item.name]
        lines.append(
            f"| `ex_images/{item.name}.jpg` | {item.split} | {src.distribution}: `{src.package}/{src.path}` "
            f"| {box} | {w}x{h} | {src.credit} | {item.caption} |"
        )
    lines += [
        "",
        "## Held-out (eval) images",
        "",
        f"{len(heldout)} photographs from wallpaper packages of Debian 12 (bookworm): "
        + ", ".join(f"{p} {v}" for p, v in debs)
        + ".",
        "Debian packages are not Python dependencies, so these downscaled JPEGs are committed and an",
        "ordinary run of the tool copies them unchanged. Each is a modified version (downscaled and",
        "re-encoded, some cropped) of the original and is distributed under the original's licence,",
        "with the credit below; the original photo and the full licence text are in the Debian package",
        "(`/usr/share/doc/PACKAGE/copyright`). Licences: CC-BY-4.0, CC-BY-SA-3.0/4.0 and CC0-1.0 as the",
        "lomiri packages' copyright file states per file; GPL-2.0-or-later for mate-backgrounds as its",
        "copyright file states per file; LGPL-3.0 for plasma-workspace-wallpapers as each wallpaper's",
        "`metadata.json` states (the package's copyright file says GPL-2+ for all its files).",
        "",
        "| file | split | Debian package (version): path | crop box | size | author | licence (where stated) "
        "| caption |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for item in heldout:
        src = DEB_SOURCES[item.source]
        box = "full photo" if item.box is None else f"crop of `{Path(src.path).name}` {item.box}"
        w, h = sizes[item.name]
        lines.append(
            f"| `ex_images/{item.name}.jpg` | {item.split} | {src.package} ({src.version}): `{src.path}` "
            f"| {box} | {w}x{h} | {src.author} | {src.licence} ({src.credit}) | {item.caption} |"
        )
    lines += [
        "",
        "To re-derive them on a Debian 12 machine: `PYTHONPATH=. python tools/make_sample_data.py --debs /tmp/debs`",
        "(add `--check` to compare with the committed files). By hand, per file, the original photo is",
        "extracted by the command below (run it in an empty folder); the tool then crops it to the box",
        "above and downscales it as described at the top.",
        "",
        "```sh",
    ]
    for item in heldout:
        lines.append(f"# ex_images/{item.name}.jpg")
        lines.append(DEB_SOURCES[item.source].command(f"{item.name}.orig.jpg"))
    lines.append("```")
    return "\n".join(lines) + "\n"


def build(
    out_dir: Path, items: list[Item] = ALL_ITEMS, debs: Path | None = None, committed: Path = COMMITTED_DIR
) -> None:
    """Write the whole dataset folder into ``out_dir`` (replacing it).

    Training images are made from the installed wheels. Held-out images are re-derived from
    their Debian packages when ``debs`` (a download cache) is given, else copied from the
    ``committed`` folder (read before ``out_dir`` is replaced, so the two may be the same).
    """
    check_items(items)
    kept: dict[str, bytes] = {}
    if debs is None:
        for item in items:
            if item.source in DEB_SOURCES:
                path = committed / "ex_images" / f"{item.name}.jpg"
                if not path.is_file():
                    raise SystemExit(f"{path} is missing: re-derive it with --debs DIR")
                kept[item.name] = path.read_bytes()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "ex_images").mkdir(parents=True)
    sizes = {}
    for item in items:
        target = out_dir / "ex_images" / f"{item.name}.jpg"
        if item.name in kept:
            target.write_bytes(kept[item.name])
            with Image.open(target) as image:
                sizes[item.name] = image.size
            continue
        image = make_image(item, debs)
        sizes[item.name] = image.size
        image.save(target, "JPEG", quality=JPEG_QUALITY)
    train = [record(i) for i in items if i.split == "train"]
    evaluation = [record(i) for i in items if i.split == "eval"]
    (out_dir / "train.json").write_text(dump_json(train), encoding="utf-8")
    (out_dir / "eval.json").write_text(dump_json(evaluation), encoding="utf-8")
    (out_dir / "ex_cn.json").write_text(dump_json(train + evaluation), encoding="utf-8")
    (out_dir / "SOURCES.md").write_text(sources_markdown(items, sizes), encoding="utf-8")


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths whose bytes differ between two dataset folders (or exist in one only)."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {
        p.relative_to(b) for p in b.rglob("*") if p.is_file()
    }
    return sorted(
        str(n)
        for n in names
        if not ((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes())
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the sample folder, or ``--check`` it against a fresh build."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COMMITTED_DIR)
    parser.add_argument("--check", action="store_true", help="compare with a fresh build, change nothing")
    parser.add_argument(
        "--debs",
        type=Path,
        default=None,
        metavar="DIR",
        help="re-derive the held-out images from their Debian packages, cached in DIR "
        "(needs apt-get and dpkg-deb); without it they are copied from the committed folder",
    )
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "clot_sample"
            build(fresh, debs=args.debs, committed=args.out)
            diff = differences(fresh, args.out)
        print("up to date" if not diff else "differs: " + ", ".join(diff))
        return int(bool(diff))
    build(args.out, debs=args.debs, committed=args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(ALL_ITEMS)} images to {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
