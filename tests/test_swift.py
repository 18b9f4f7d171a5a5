"""helpers.ms_swift: ms-swift's JSONL from the book's converter, the checks before ms-swift starts, the commands."""

import json
from pathlib import Path

import pytest

from helpers import data, ms_swift, swift_plugin
from helpers.errors import DatasetError, RunError, UsageError


@pytest.fixture
def eval_jsonl(tmp_path):
    return data.to_swift_jsonl(data.load_sample("eval"), tmp_path / "eval.jsonl")


def _write(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_converter_output_passes_the_check(eval_jsonl):
    rows = ms_swift.read_jsonl(eval_jsonl)
    assert ms_swift.check_jsonl(eval_jsonl) == len(rows) == len(data.load_sample("eval"))
    assert all(r["query"].startswith("<image>") and Path(r["images"][0]).is_absolute() for r in rows)


def test_each_bad_record_is_named_with_its_line_and_fix(tmp_path, eval_jsonl):
    good = ms_swift.read_jsonl(eval_jsonl)[0]
    path = _write(
        tmp_path,
        [
            good,
            {"query": good["query"], "response": "r"},  # no images
            {**good, "images": ["ex_images/nowhere.jpg"]},  # missing file
            {"query": "讲个笑话", "response": "r", "images": []},  # text-only
            {**good, "query": "<image><image>两张?"},  # two tags, one image
            "{not json",
        ],
    )
    problems = ms_swift.jsonl_problems(path, cwd=tmp_path)
    assert [p.split(":")[0] for p in problems] == [f"bad.jsonl line {n}" for n in (2, 3, 4, 5, 6)]
    assert 'no "images" field' in problems[0] and "add" in problems[0]
    assert "nowhere.jpg' does not exist" in problems[1] and str(tmp_path) in problems[1]
    assert "text-only record" in problems[2]
    assert '2 "<image>" tags for 1 images' in problems[3]
    assert "not JSON" in problems[4]
    with pytest.raises(DatasetError, match=r"5 problems"):
        ms_swift.check_jsonl(path, cwd=tmp_path)


def test_relative_image_paths_start_where_ms_swift_runs(tmp_path, eval_jsonl):
    """ms-swift resolves a relative path against its working folder (os.path.abspath), not the file's."""
    good = ms_swift.read_jsonl(eval_jsonl)[0]
    (tmp_path / "run" / "img").mkdir(parents=True)
    (tmp_path / "run" / "img" / "a.jpg").write_bytes(Path(good["images"][0]).read_bytes())
    (tmp_path / "data").mkdir()
    path = _write(tmp_path / "data", [{**good, "images": ["img/a.jpg"]}])
    assert ms_swift.check_jsonl(path, cwd=tmp_path / "run") == 1
    problems = ms_swift.jsonl_problems(path, cwd=tmp_path / "data")
    assert len(problems) == 1 and "does not exist" in problems[0] and str(tmp_path / "data") in problems[0]


def test_missing_and_empty_files(tmp_path):
    assert "no such file" in ms_swift.jsonl_problems(tmp_path / "none.jsonl")[0]
    assert "empty" in ms_swift.jsonl_problems(_write(tmp_path, [""]))[0]


def test_sft_command_carries_the_recipe_and_stays_offline():
    cmd = ms_swift.sft_command("/m", "/t.jsonl", "/o", lora_rank=128, lora_alpha=256, lr=5e-4, max_steps=8)
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[:2] == ["swift", "sft"]
    assert args["--train_type"] == "lora" and args["--lora_rank"] == "128" and args["--lora_alpha"] == "256"
    assert float(args["--learning_rate"]) == 5e-4 and args["--max_steps"] == "8" and args["--save_steps"] == "8"
    assert args["--check_model"] == "false"  # no ModelScope "is it the latest?" request
    assert args["--model_type"] == "internvl2" and args["--template"] == swift_plugin.TEMPLATE == ms_swift.TEMPLATE
    assert Path(args["--custom_register_path"]) == ms_swift.PLUGIN and ms_swift.PLUGIN.is_file()
    assert args["--torch_dtype"] == "float32"
    gpu = ms_swift.sft_command("/m", "/t", "/o", lora_rank=8, lora_alpha=16, lr=1e-4, max_steps=1, gpu=True)
    assert gpu[gpu.index("--torch_dtype") + 1] == "bfloat16" and gpu[gpu.index("--attn_impl") + 1] == "eager"


def test_infer_command_base_or_checkpoint():
    base = ms_swift.infer_command(model="/m", val_dataset="/e.jsonl", result_path="/r.jsonl", max_new_tokens=7)
    assert (
        base[base.index("--model") + 1] == "/m"
        and "--template" in base
        and base[-4:]
        == [
            "--val_dataset",
            "/e.jsonl",
            "--result_path",
            "/r.jsonl",
        ]
    )
    ckpt = ms_swift.infer_command(ckpt_dir="/o/checkpoint-4")
    assert ckpt[ckpt.index("--load_dataset_config") + 1] == "true" and "--model" not in ckpt
    with pytest.raises(UsageError):
        ms_swift.infer_command(model="/m", ckpt_dir="/c")
    assert ms_swift.export_command("/c")[-2:] == ["--merge_lora", "true"]


def test_image_tokens_follow_the_config():
    from types import SimpleNamespace as NS

    cfg = NS(force_image_size=448, downsample_ratio=0.5, vision_config=NS(patch_size=28, image_size=448))
    assert swift_plugin.image_tokens_per_tile(cfg) == 64
    cfg.force_image_size = None
    cfg.vision_config.patch_size = 14
    assert swift_plugin.image_tokens_per_tile(cfg) == 256


def test_run_without_the_environment_says_how_to_install(tmp_path):
    with pytest.raises(RunError, match="make swift"):
        ms_swift.run(["swift", "infer"], tmp_path / "log.txt", venv=tmp_path / "no-venv")


def test_last_checkpoint_picks_the_newest_run_and_step(tmp_path):
    for d in ("v0-20260101-000000/checkpoint-8", "v1-20260102-000000/checkpoint-4", "v1-20260102-000000/checkpoint-12"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "v1-20260102-000000/checkpoint-12-merged").mkdir()
    assert ms_swift.last_checkpoint(tmp_path).relative_to(tmp_path).as_posix() == "v1-20260102-000000/checkpoint-12"
    with pytest.raises(RunError):
        ms_swift.last_checkpoint(tmp_path / "v0-20260101-000000")


def _pins(name: str) -> dict[str, str]:
    out = {}
    for line in (Path(__file__).resolve().parents[1] / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, version = line.split("==")
            out[pkg.split("[")[0].lower().replace("_", "-")] = version
    return out


def test_swift_lock_agrees_with_its_pins_and_the_gpu_wheels():
    lock = _pins("lock-swift.txt")
    for pkg, version in _pins("swift.txt").items():
        assert lock.get(pkg) == version, f"{pkg}: pinned {version} in swift.txt, locked {lock.get(pkg)}"
    assert float(lock["numpy"].rsplit(".", 1)[0]) < 2  # ms-swift 3.x: numpy<2.0, the reason for .venv-swift
    gpu = _pins("gpu-swift.txt")
    wrong = {k: (v, lock[k]) for k, v in gpu.items() if k in lock and lock[k] != v}
    assert not wrong and gpu["ms-swift"] == lock["ms-swift"], wrong
