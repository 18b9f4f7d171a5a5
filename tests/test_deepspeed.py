"""DeepSpeed: the checks before any model loads, the notebook parameters of chapter 09, and a ZeRO-2 run on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import short_recipe

from helpers import REPO_DIR, SAMPLE_DATA_DIR, config, data, params, train
from helpers.errors import BookError

LORA = config.Recipe("/m", "/d.json", "/d", quantization_llm=False)
QLORA = config.Recipe("/m", "/d.json", "/d")


def test_zero3_with_4bit_weights_is_refused_with_the_reason():
    (problem,) = config.deepspeed_problems(QLORA, "deepspeed_zero3", installed=True)
    assert problem.name == "deepspeed" and "uint8" in problem.rule and "deepspeed_zero2" in problem.rule
    assert config.deepspeed_problems(QLORA, "deepspeed_zero3_offload", installed=True)
    assert config.deepspeed_problems(LORA, "deepspeed_zero3", installed=True) == []
    for name in ("deepspeed_zero1", "deepspeed_zero2"):
        assert config.deepspeed_problems(QLORA, name, installed=True) == []
    assert config.deepspeed_problems(QLORA, None, installed=False) == []


def test_missing_deepspeed_names_the_install_command():
    with pytest.raises(BookError) as err:
        config.check_deepspeed(LORA, "deepspeed_zero2", installed=False)
    assert "not installed" in str(err.value) and config.DEEPSPEED_INSTALL in str(err.value)
    assert "deepspeed==0.18.9" in config.DEEPSPEED_INSTALL
    pins = (REPO_DIR / "requirements" / "deepspeed.txt").read_text()
    assert "deepspeed==0.18.9" in pins  # the install command and the GPU pins agree


def test_unknown_config_name_lists_xtuners():
    (problem,) = config.deepspeed_problems(LORA, "zero2", installed=True)
    assert "deepspeed_zero2" in problem.rule
    shipped = importlib.util.find_spec("xtuner").submodule_search_locations[0]
    assert {p.stem for p in (Path(shipped) / "configs" / "deepspeed").glob("*.json")} == set(config.DEEPSPEED_CONFIGS)


def test_fit_to_hardware_and_train_check_before_anything_starts(tmp_path: Path, monkeypatch):
    with pytest.raises(BookError, match="ZeRO-3"):
        config.fit_to_hardware(QLORA, cuda=True, bnb_4bit=True, deepspeed="deepspeed_zero3")
    monkeypatch.setattr(config, "deepspeed_installed", lambda: False)
    cfg = config.write(
        config.Recipe("/no/model", str(SAMPLE_DATA_DIR / "train.json"), str(SAMPLE_DATA_DIR) + "/"),
        tmp_path / "config.py",
        check_dataset=False,
    )
    with pytest.raises(BookError, match="not installed"):
        train.train(cfg, tmp_path / "work", deepspeed="deepspeed_zero2", progress=False)
    assert not (tmp_path / "work" / "train.log").exists(), "nothing was started"


def test_notebook_09_parameter_rules():
    sample = str(REPO_DIR / "helpers" / "sample_data" / "foodieqa_sample")
    assert params.check({"foodie_path": sample, "foodie_steps": 8, "qlora_twin": True}) == []
    found = params.check({"foodie_path": str(SAMPLE_DATA_DIR), "foodie_steps": 0, "qlora_twin": "yes"})
    assert [p.name for p in found] == ["foodie_path", "foodie_steps", "qlora_twin"]
    assert "sivqa_tidy.json" in found[0].rule


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed here")
def test_zero2_lora_trains_on_the_cpu(tiny_model_dir, tmp_path: Path):
    """XTuner --deepspeed deepspeed_zero2 in one CPU process (helpers.compat.deepspeed_on_cpu), checkpoint readable."""
    from helpers import convert

    splits = data.prepare_splits(REPO_DIR / "helpers" / "sample_data" / "foodieqa_sample", tmp_path / "splits")
    recipe = short_recipe(
        tiny_model_dir, splits.train_file, splits.train_file.parent, quantization_llm=False, max_iters=4, save_steps=4
    )
    cfg = config.write(recipe, tmp_path / "config.py")
    result = train.train(cfg, tmp_path / "work", deepspeed="deepspeed_zero2", progress=False)
    assert result.ok and result.steps == 4
    log = result.log.read_text()
    assert "deepspeed_shm_comm built" not in log  # nothing compiled
    (checkpoint,) = train.list_checkpoints(tmp_path / "work")
    assert checkpoint.is_dir(), "DeepSpeed saves a folder"
    assert any("lora_" in k for k in convert.load_checkpoint(checkpoint))
    merged = convert.convert(checkpoint, tmp_path / "merged")  # the DeepSpeed folder merges and loads
    assert (merged.out_dir / "model.safetensors").is_file()


def test_a_deepspeed_checkpoint_without_deepspeed_names_the_install(tmp_path: Path, monkeypatch):
    from helpers import convert

    folder = tmp_path / "iter_4.pth" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"")

    def fail(path):
        raise ImportError("The provided PTH model appears to be a DeepSpeed checkpoint. However, DeepSpeed ...")

    import xtuner.model.utils

    monkeypatch.setattr(xtuner.model.utils, "guess_load_checkpoint", fail)
    monkeypatch.setattr(train, "check_checkpoint", lambda p: Path(p))
    with pytest.raises(BookError, match="DeepSpeed checkpoint folder") as err:
        convert.load_checkpoint(tmp_path / "iter_4.pth")
    assert config.DEEPSPEED_INSTALL in str(err.value)


def test_one_deepspeed_process_gets_torchruns_environment(monkeypatch):
    from helpers import compat

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert compat.deepspeed_single_process()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.setenv("RANK", "3")  # a launcher's values win
    assert not compat.deepspeed_single_process() and os.environ["RANK"] == "3"
