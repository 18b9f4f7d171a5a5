"""helpers.config writes the course's XTuner config from parameters and refuses impossible values."""

from __future__ import annotations

import pytest

from helpers import config
from helpers.errors import BookError, ProfileError


def recipe(**kw):
    return config.Recipe("/models/InternVL2-2B", "/data/CLoT_cn_2000/ex_cn.json", "/data/CLoT_cn_2000/", **kw)


def test_defaults_are_the_course_values():
    r = config.course_recipe("/models/InternVL2-2B", "/data/CLoT_cn_2000/ex_cn.json", "/data/CLoT_cn_2000/")
    assert (r.lora_r, r.lora_alpha, r.lora_dropout) == (128, 256, 0.05)
    assert (r.batch_size, r.accumulative_counts, r.max_length, r.lr, r.max_epochs) == (4, 4, 6656, 2e-5, 6)
    assert r.quantization_llm and not r.quantization_vit and r.freeze_llm and r.freeze_visual_encoder
    assert (r.amp_dtype, r.save_steps, r.save_total_limit, r.optimizer) == ("float16", 1000, 1, "AdamW")
    assert r.save_optimizer is False and r.seed is None
    ours = recipe()
    assert {k for k, *_ in config.diff(ours, r)} == set(config.COURSE_DIFFERENCES)


def test_rendered_config_is_loaded_by_mmengine_with_the_recipe_values(tmp_path):
    from mmengine.config import Config

    path = config.write(recipe(lora_r=64, lr=1e-4, optimizer="DAdaptAdam"), tmp_path / "cfg.py", check_dataset=False)
    cfg = Config.fromfile(str(path))
    assert cfg.model.llm_lora.r == 64 and cfg.model.llm_lora.lora_alpha == 256
    assert cfg.model.quantization_llm is True and cfg.model.llm_lora.target_modules is None
    assert cfg.optim_wrapper.type.__name__ == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "float16"
    assert cfg.optim_wrapper.optimizer.type.__name__ == "DAdaptAdam" and cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.train_dataloader.sampler.per_device_batch_size == 16
    assert cfg.default_hooks.checkpoint.interval == 1000 and cfg.train_cfg.max_epochs == 6
    assert (tmp_path / "recipe.json").exists()


def test_max_iters_schedule_and_short_warmup(tmp_path):
    from mmengine.config import Config

    written = config.write(recipe(max_iters=100, warmup_ratio=0.1), tmp_path / "a.py", check_dataset=False)
    cfg = Config.fromfile(str(written))
    assert cfg.train_cfg.max_iters == 100 and [s.type.__name__ for s in cfg.param_scheduler] == [
        "LinearLR",
        "CosineAnnealingLR",
    ]
    # a one-step warm-up would freeze the lr at start_factor * lr in mmengine: it is left out
    written = config.write(recipe(max_iters=10, warmup_ratio=0.1), tmp_path / "b.py", check_dataset=False)
    cfg = Config.fromfile(str(written))
    assert [s.type.__name__ for s in cfg.param_scheduler] == ["CosineAnnealingLR"]


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("lora_r", 0, "rank"),
        ("lora_r", -4, "rank"),
        ("lr", 0.0, "learning rate"),
        ("lr", -1e-5, "learning rate"),
        ("optimizer", "SGD", "unknown"),
        ("batch_size", 0, "at least 1"),
        ("amp_dtype", "int8", "float16"),
        ("lora_dropout", 1.0, "probability"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_and_the_fix(field, value, words):
    with pytest.raises(BookError, match=field) as exc:
        config.validate(recipe(**{field: value}))
    assert words in str(exc.value)


def test_max_length_shorter_than_one_image_is_rejected():
    with pytest.raises(BookError, match="every image would be cut"):
        config.validate(recipe(max_length=1000), min_sample_tokens=3400)
    config.validate(recipe(), min_sample_tokens=3400)


def test_cpu_overrides_are_explicit(monkeypatch):
    monkeypatch.setattr(config, "deepspeed_installed", lambda: True)  # its absence is tests/test_deepspeed.py's
    new, changes = config.fit_to_hardware(recipe(), cuda=False, bnb_4bit=True, cpu_cores=2)
    assert {c.field: c.after for c in changes} == {
        "amp_dtype": None,
        "dist_backend": "gloo",
        "dataloader_num_workers": 1,
    }
    assert all(c.reason for c in changes) and new.quantization_llm
    _, changes = config.fit_to_hardware(recipe(), cuda=False, bnb_4bit=True, cpu_cores=8)
    assert "dataloader_num_workers" not in {c.field for c in changes}  # the course's 4 workers, 7 cores spare
    _, changes = config.fit_to_hardware(recipe(), cuda=False, bnb_4bit=True, cpu_cores=4)
    assert {c.field: c.after for c in changes}["dataloader_num_workers"] == 3
    _, changes = config.fit_to_hardware(recipe(torch_compile="layers"), cuda=False, bnb_4bit=True)
    assert {c.field: c.after for c in changes}["torch_compile"] == "none"  # a GPU lever: off, with the reason
    kept, _ = config.fit_to_hardware(recipe(torch_compile="layers"), cuda=True, bnb_4bit=True)
    assert kept.torch_compile == "layers"
    same, none = config.fit_to_hardware(recipe(), cuda=True, bnb_4bit=True, deepspeed="deepspeed_zero1")
    assert none == [] and same == recipe()
    # one GPU without DeepSpeed keeps fp16 AMP: helpers.xtuner_launch trains the projector in float32
    same, none = config.fit_to_hardware(recipe(), cuda=True, bnb_4bit=True)
    assert none == [] and same.amp_dtype == "float16"


def test_persistent_workers_are_written_only_when_asked_for():
    assert "persistent_workers" not in config.render(recipe())
    assert "persistent_workers=True" in config.render(recipe(persistent_workers=True))
    assert "persistent_workers" not in config.render(recipe(persistent_workers=True, dataloader_num_workers=0))


def test_4bit_where_it_cannot_run_is_refused():
    with pytest.raises(ProfileError, match="quantization_llm=False"):
        config.fit_to_hardware(recipe(), cuda=False, bnb_4bit=False)
    new, _ = config.fit_to_hardware(recipe(quantization_llm=False), cuda=False, bnb_4bit=False)
    assert new.quantization_llm is False


def test_recipe_json_reads_back_as_the_recipe_written(tmp_path):
    written = recipe(
        lora_r=16, lora_targets=["wqkv", "wo"], betas=(0.8, 0.95), max_iters=12, extra={"note": "x"}, amp_dtype=None
    )
    config.write(written, tmp_path / "qlora" / "config.py", check_dataset=False)
    assert config.Recipe.load(tmp_path / "qlora" / "recipe.json") == written
    assert config.Recipe.load(tmp_path / "qlora") == written
    with pytest.raises(BookError, match="does not exist"):
        config.Recipe.load(tmp_path / "elsewhere")
    (tmp_path / "bad.json").write_text('{"lora_r": 8, "colour": "red"}')
    with pytest.raises(BookError, match="unknown fields \\['colour'\\]"):
        config.Recipe.load(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text('{"lora_r": 8}')
    with pytest.raises(BookError, match="not a complete recipe"):
        config.Recipe.load(tmp_path / "short.json")


#: Recipes whose rendered config is kept in tests/data/xtuner_configs/NAME.txt, byte for byte: a change
#: to the generated file shows up there (regenerate a file only when the change is meant).
GOLDEN = {
    "course": lambda: config.course_recipe(
        "/models/InternVL2-2B", "/data/CLoT_cn_2000/ex_cn.json", "/data/CLoT_cn_2000/"
    ),
    "iters_dadapt_targets": lambda: config.Recipe(
        "/m/tiny",
        "/d/train.json",
        "/d",
        max_iters=40,
        warmup_ratio=0.1,
        optimizer="DAdaptAdam",
        lr=1.0,
        lora_r=8,
        lora_alpha=16,
        lora_targets=["wqkv", "wo"],
        persistent_workers=True,
        seed=3,
    ),
    "cpu_short_warmup": lambda: config.Recipe(
        "/m/tiny",
        "/d/train.json",
        "/d",
        max_iters=10,
        warmup_ratio=0.1,
        amp_dtype=None,
        dist_backend="gloo",
        dataloader_num_workers=0,
        persistent_workers=True,
        quantization_llm=False,
        betas=(0.8, 0.95),
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_rendered_config_is_byte_identical_to_the_reference(name):
    from pathlib import Path

    expected = (Path(__file__).parent / "data" / "xtuner_configs" / f"{name}.txt").read_text(encoding="utf-8")
    assert config.render(GOLDEN[name]()) == expected


def test_the_config_template_is_package_data():
    import tomllib
    from pathlib import Path

    root = Path(config.__file__).resolve().parent
    patterns = tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert config.TEMPLATE.is_file()
    assert any(config.TEMPLATE.relative_to(root).match(p) for p in patterns["helpers"]), (
        "pyproject.toml must ship helpers/templates/*.tmpl, or an installed helpers cannot render configs"
    )


def _stock_config():
    import importlib.util
    from pathlib import Path

    package = Path(importlib.util.find_spec("xtuner").submodule_search_locations[0])
    return package / "configs" / "internvl" / "v2" / f"{config.STOCK_CONFIG}.py"


def test_the_course_edits_turn_xtuners_stock_file_into_the_course_values(tmp_path):
    stock = _stock_config()
    edited = tmp_path / "course.py"
    edited.write_text(config.edit_config(stock.read_text(), config.course_edits("/m/InternVL2-2B", "/d/CLoT_cn_2000")))
    before, after = config.config_fields(stock), config.config_fields(edited)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert {k: changed[k] for k in ("batch_size", "accumulative_counts", "max_epochs", "lr", "max_length")} == {
        "batch_size": (8, 4),
        "accumulative_counts": (2, 4),
        "max_epochs": (1, 6),
        "lr": (1e-6, 2e-5),
        "max_length": (8192, 6656),
    }
    assert after["data_path"] == "/d/CLoT_cn_2000/ex_cn.json" and after["image_folder"] == "/d/CLoT_cn_2000/"
    # the book's course_recipe writes the same values (data_root is a name its template does not use)
    book = tmp_path / "book.py"
    book.write_text(config.render(config.course_recipe("/m/InternVL2-2B", after["data_path"], after["image_folder"])))
    groups = config.compare_configs({"course": edited, "book": book})
    assert [names[0] for names, _ in groups] == ["data_root"]


def test_edit_config_refuses_a_target_that_is_not_there_exactly_once():
    with pytest.raises(BookError, match="'lr' 0 times"):
        config.edit_config("x = 1\n", {"lr": "2e-5"})
    with pytest.raises(BookError, match="occurs 2 times"):
        config.edit_config("a = 1\nb = 1\n", replacements=[("= 1", "= 2")])


def test_torch_compile_adds_the_layer_compiler_hook_and_nothing_else():
    plain = config.render(recipe())
    assert "CompileLayersHook" not in plain
    text = config.render(recipe(torch_compile="layers", step_timing="/tmp/s.json"))
    assert "from helpers.compile_layers import CompileLayersHook" in text
    assert "dict(type=CompileLayersHook)," in text and "dict(type=StepTimerHook," in text  # both hooks, one list
    compile(text, "config.py", "exec")
    with pytest.raises(BookError, match="torch_compile='all'"):
        config.render(recipe(torch_compile="all"))
