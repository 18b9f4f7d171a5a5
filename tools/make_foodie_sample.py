"""Write helpers/sample_data/foodieqa_sample: a small dataset in FoodieQA's release layout.

FoodieQA's single-image part is ``sivqa_tidy.json`` (multiple-choice questions
about one photo each) plus ``images/``; the release also holds ``mivqa_tidy.json``
and ``textqa_tidy.json``, which the book does not read (written here as empty
lists, so the folder looks like the release). The real dataset needs a Hugging
Face login and is not redistributed, so this sample asks questions of our own
about 16 whole photos of the book's CLoT-style sample (copied unchanged from
``helpers/sample_data/clot_sample/ex_images``; their sources and licences are
in that folder's SOURCES.md and are repeated in this folder's SOURCES.md).
Three photos show food or drink; for the others the questions honestly ask what
the photo shows, and ``food_name`` holds the name of what it shows.

    python tools/make_foodie_sample.py           # (re)write the folder
    python tools/make_foodie_sample.py --check   # exit 1 if the committed files differ
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import SAMPLE_DATA_DIR
from helpers.data import FOODIE_FILE, foodie_item

OUT = ROOT / "helpers" / "sample_data" / "foodieqa_sample"

# photo -> (food_name, food_type, food_location, main_ingredient, [(question_type, question, choices, answer)])
PHOTOS: dict[str, tuple[str, str, str, list[str], list[tuple[str, str, list[str], int]]]] = {
    "coffee": (
        "浓缩咖啡",
        "饮品",
        "咖啡馆",
        ["咖啡豆"],
        [
            ("food_type", "图片中的饮品是什么?", ["浓缩咖啡", "珍珠奶茶", "豆浆", "绿茶"], 0),
            ("color", "图片中咖啡杯下面的托盘是什么颜色?", ["白色", "红色", "蓝色", "绿色"], 1),
        ],
    ),
    "fig_bowl": (
        "无花果",
        "水果",
        "家常",
        ["无花果"],
        [
            ("main-ingredient", "图片中碗里的水果是什么?", ["苹果", "石榴", "无花果", "西瓜"], 2),
            ("amount", "图片中的水果被切成了什么样?", ["切成两半", "切成小块", "榨成了汁", "完整没切"], 0),
        ],
    ),
    "wine_drum": (
        "红酒",
        "饮品",
        "家中",
        ["葡萄"],
        [
            ("food_type", "图片中桌子上的瓶子里装的是什么?", ["红酒", "酱油", "牛奶", "啤酒"], 0),
            ("present", "图片中红酒旁边放着什么乐器?", ["手鼓", "钢琴", "小提琴", "吉他"], 0),
        ],
    ),
    "ihc": (
        "组织切片",
        "不是食物",
        "实验室",
        [],
        [
            (
                "food_type",
                "图片中看起来像焦糖蛋糕的东西其实是什么?",
                ["焦糖蛋糕", "显微镜下的组织切片", "面包", "木纹"],
                1,
            ),
            ("color", "图片中的主要颜色是什么?", ["棕色和蓝色", "红色和绿色", "黑色和白色", "紫色和黄色"], 0),
        ],
    ),
    "chelsea": (
        "猫",
        "不是食物",
        "家中",
        [],
        [
            ("food_type", "图片中的动物是什么?", ["狗", "兔子", "猫", "老虎"], 2),
            ("color", "图片中这只动物的眼睛是什么颜色?", ["黄绿色", "蓝色", "红色", "黑色"], 0),
        ],
    ),
    "china": (
        "宝塔",
        "不是食物",
        "湖边",
        [],
        [
            ("food_type", "图片中的建筑是什么?", ["宝塔", "摩天大楼", "灯塔", "桥"], 0),
            ("present", "图片中建筑的后面是什么?", ["湖水", "沙漠", "雪山", "城市街道"], 0),
        ],
    ),
    "astronaut": (
        "宇航员",
        "不是食物",
        "航天中心",
        [],
        [
            ("food_type", "图片中的人穿的是什么衣服?", ["橙色航天服", "白大褂", "西装", "运动服"], 0),
            ("present", "图片中人物身后的背景里有什么?", ["国旗和航天飞机模型", "书架", "大海", "森林"], 0),
        ],
    ),
    "rocket": (
        "火箭",
        "不是食物",
        "发射场",
        [],
        [
            ("food_type", "图片中发射塔之间立着的是什么?", ["火箭", "路灯", "风车", "电线杆"], 0),
            ("time", "这张照片是在什么时候拍的?", ["夜晚", "正午", "清晨的雾里", "雪天"], 0),
        ],
    ),
    "coins": (
        "硬币",
        "不是食物",
        "博物馆",
        [],
        [
            ("food_type", "图片中排成几行的东西是什么?", ["饼干", "硬币", "纽扣", "药片"], 1),
            ("color", "这张照片是什么颜色的?", ["黑白", "彩色", "红色调", "蓝色调"], 0),
        ],
    ),
    "dogs_window": (
        "狗",
        "不是食物",
        "木屋",
        [],
        [
            ("food_type", "图片中窗口里探出头的是什么动物?", ["猫", "狗", "鹦鹉", "兔子"], 1),
            ("amount", "图片中有几只狗?", ["一只", "两只", "三只", "四只"], 1),
        ],
    ),
    "ladybird": (
        "瓢虫",
        "不是食物",
        "草地",
        [],
        [
            ("food_type", "图片中草叶上的小虫是什么?", ["蜜蜂", "蚂蚁", "瓢虫", "蝴蝶"], 2),
            ("color", "图片中的小花是什么颜色?", ["蓝色", "红色", "黄色", "白色"], 0),
        ],
    ),
    "dandelions": (
        "蒲公英",
        "不是食物",
        "田野",
        [],
        [
            ("food_type", "图片中的植物是什么?", ["向日葵", "蒲公英", "玫瑰", "竹子"], 1),
            ("time", "图片中的光线像是一天中的什么时候?", ["傍晚的逆光", "正午", "深夜", "阴雨天"], 0),
        ],
    ),
    "evening_boats": (
        "小船",
        "不是食物",
        "湖边",
        [],
        [
            ("food_type", "图片中岸边停着的是什么?", ["汽车", "自行车", "木船", "飞机"], 2),
            ("time", "图片中的天空是什么时候的样子?", ["黄昏", "正午", "深夜", "清晨的大雾"], 0),
        ],
    ),
    "retina": (
        "眼底",
        "不是食物",
        "医院",
        [],
        [
            ("food_type", "这张照片拍的是什么?", ["一个橙子", "眼睛的眼底", "太阳", "一块披萨"], 1),
            ("color", "图片中圆形区域的主要颜色是什么?", ["橙红色", "绿色", "蓝色", "白色"], 0),
        ],
    ),
    "mountain_path": (
        "山路",
        "不是食物",
        "山区",
        [],
        [
            ("food_type", "图片中草地上通向远处的是什么?", ["河流", "小路", "铁路", "围墙"], 1),
            ("present", "图片远处的山顶上有什么?", ["积雪", "城堡", "风车", "森林大火"], 0),
        ],
    ),
    "fallen_leaf": (
        "落叶",
        "不是食物",
        "树林",
        [],
        [
            ("food_type", "图片中地上的是什么?", ["落叶", "花瓣", "羽毛", "纸片"], 0),
            ("time", "这张照片最可能是在哪个季节拍的?", ["秋天", "春天", "夏天", "冬天"], 0),
        ],
    ),
}


def items() -> list[dict]:
    """The sample's ``sivqa_tidy.json`` items, photo after photo."""
    out = []
    for food_id, (photo, (name, kind, where, ingredients, questions)) in enumerate(PHOTOS.items()):
        for question_type, question, choices, answer in questions:
            out.append(
                foodie_item(
                    question=question,
                    choices=choices,
                    answer=answer,
                    food_name=name,
                    food_file=f"images/{photo}.jpg",
                    question_id=f"sivqa_{len(out)}",
                    question_type=question_type,
                    food_type=kind,
                    food_location=where,
                    main_ingredient=ingredients,
                    food_id=food_id,
                )
            )
    return out


def sources() -> str:
    """SOURCES.md: the rows of clot_sample's SOURCES.md for the photos used, and the licence of the text."""
    lines = (SAMPLE_DATA_DIR / "SOURCES.md").read_text(encoding="utf-8").splitlines()
    rows = {}
    for line in lines:
        for photo in PHOTOS:
            if line.startswith(f"| `ex_images/{photo}.jpg` |"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                rows[photo] = cells[2:-1]  # package/path ... licence; drop the file, split and caption
    head = [
        "# Sources of the FoodieQA-layout sample",
        "",
        "A small dataset in the layout of the FoodieQA release (Li et al., 2024): `sivqa_tidy.json` (single-image",
        "multiple-choice questions, the release's field names, `helpers.data.FOODIE_FIELDS`) + `images/`; the",
        "release's `mivqa_tidy.json` and `textqa_tidy.json` are present as empty lists. It is written by",
        "`tools/make_foodie_sample.py`, which holds the questions. 16 whole photos, 2 questions each (32 items).",
        "",
        "The questions and answers were written for this book and are released with it. They are about what each",
        "photo shows; only three photos show food or drink (coffee, a fig, red wine), so for the others",
        "`food_name` names what the photo shows, not a dish. FoodieQA itself is not redistributed here.",
        "",
        "Split: none is shipped, as in the release; `helpers.data.prepare_splits` holds out whole photos",
        "(both questions of a photo stay on one side; the photos are distinct, none a crop of another).",
        "",
        "The photos are byte-for-byte copies of the book's CLoT-style sample",
        "(`helpers/sample_data/clot_sample/ex_images/`), where their processing is described; source and",
        "licence as recorded there:",
        "",
        "| file | source | crop box | size | licence / credit |",
        "| --- | --- | --- | --- | --- |",
    ]
    body = []
    for photo in PHOTOS:
        cells = rows[photo]
        source, crop, size, licence = cells[0], cells[1], cells[2], "; ".join(cells[3:])
        body.append(f"| `images/{photo}.jpg` | {source} | {crop} | {size} | {licence} |")
    return "\n".join(head + body) + "\n"


def files() -> dict[str, bytes]:
    """Every file of the folder, by relative path."""
    out = {
        FOODIE_FILE: (json.dumps(items(), ensure_ascii=False, indent=4) + "\n").encode(),
        "mivqa_tidy.json": b"[]\n",
        "textqa_tidy.json": b"[]\n",
        "SOURCES.md": sources().encode(),
    }
    for photo in PHOTOS:
        out[f"images/{photo}.jpg"] = (SAMPLE_DATA_DIR / "ex_images" / f"{photo}.jpg").read_bytes()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args()
    wanted = files()
    if args.check:
        bad = [name for name, data in wanted.items() if not (OUT / name).is_file() or (OUT / name).read_bytes() != data]
        for name in bad:
            print(f"differs: {OUT / name}")
        return 1 if bad else 0
    if OUT.exists():
        shutil.rmtree(OUT)
    for name, data in wanted.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_bytes(data)
    print(f"wrote {len(wanted)} files to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
