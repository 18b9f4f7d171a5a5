"""helpers.convert: an XTuner QLoRA checkpoint becomes an official InternVL2 directory, checked."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SAMPLE_DATA_DIR, config, convert
from helpers.errors import BookError


def _xtuner_checkpoint(model_dir, path, r=8, seed=0):
    """A checkpoint shaped like XTuner's: {'state_dict': {'model.<peft names>': ...}} with trained LoRA + mlp1."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32)
    model.language_model = get_peft_model(
        model.language_model,
        LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["wqkv", "wo", "w1", "w2", "w3", "output"], task_type="CAUSAL_LM"
        ),
    )
    state = {}
    for name, p in model.named_parameters():
        if "lora_" in name or name.startswith("mlp1."):
            state["model." + name.replace(".default.", ".default.")] = torch.randn_like(p) * 0.05
    torch.save({"meta": {}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    recipe = config.Recipe(
        str(tiny_model_dir),
        str(SAMPLE_DATA_DIR / "train.json"),
        str(SAMPLE_DATA_DIR),
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
    )
    config.write(recipe, work / "config.py")
    return _xtuner_checkpoint(tiny_model_dir, work / "iter_4.pth")


def test_merged_model_equals_base_plus_adapter_and_loads_like_the_base(tiny_model_dir, trained, tmp_path):
    result = convert.convert(trained, tmp_path / "merged", adapter_dir=tmp_path / "adapter")
    assert result.merged_vs_adapter_max_abs_diff < 1e-3
    assert result.saved_vs_adapter_max_abs_diff <= result.tolerance * result.max_abs_logit
    assert result.same_greedy_answer and result.top1_agreement >= 0.9
    assert result.saved_vs_rounded_max_abs_diff <= 1e-3 * result.max_abs_logit
    out = result.out_dir
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_model_dir / "config.json").read_text())
    assert {p.name for p in tiny_model_dir.glob("*.py")} <= {p.name for p in out.glob("*.py")}
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any("lora" in k for k in keys), "adapters are folded in"
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        assert keys == set(f.keys()), "same weight names as the base model"
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and (tmp_path / "adapter" / "mlp1.safetensors").exists()
    # the merge really changed the weights (the adapter was not a no-op)
    with safe_open(out / "model.safetensors", "pt") as f, safe_open(tiny_model_dir / "model.safetensors", "pt") as g:
        name = "language_model.model.layers.0.attention.wqkv.weight"
        assert not torch.equal(f.get_tensor(name), g.get_tensor(name))


def test_not_a_checkpoint(tmp_path, trained):
    bogus = tmp_path / "iter_1.pth"
    bogus.write_text("not a checkpoint")
    with pytest.raises(BookError, match="cannot be read"):
        convert.convert(bogus, tmp_path / "out", config=trained.parent / "config.py")
    torch.save({"state_dict": {"model.something.weight": torch.zeros(2)}}, tmp_path / "iter_2.pth")
    with pytest.raises(BookError, match="no LoRA or projector weights"):
        convert.convert(tmp_path / "iter_2.pth", tmp_path / "out", config=trained.parent / "config.py")


def test_the_official_model_code_converts_exactly(tmp_path):
    """The official InternLM2 code caches rotary cos/sin as buffers; the saved folder must still match exactly."""
    pytest.importorskip("timm")  # the official modeling_intern_vit.py imports it
    from helpers import tiny

    model_dir = tiny.build("tiny", tmp_path / "official", remote_code="official")
    recipe = config.Recipe(str(model_dir), str(SAMPLE_DATA_DIR / "train.json"), str(SAMPLE_DATA_DIR) + "/", lora_r=8)
    config.write(recipe, tmp_path / "work" / "config.py")
    ckpt = _xtuner_checkpoint(model_dir, tmp_path / "work" / "iter_4.pth")
    # a folder name no other test saves to: transformers imports remote code as a module named after the
    # folder, and one process reuses the first such module (another test's "merged" holds the book's code)
    result = convert.convert(ckpt, tmp_path / "official-merged")  # the official forward() also needs image_flags
    assert result.saved_vs_rounded_max_abs_diff == 0.0, "the saved weights hold exactly the rounded merge"
    assert result.same_greedy_answer


def test_checkpoint_of_another_model_or_rank(tiny_model_dir, trained, tmp_path):
    other = _xtuner_checkpoint(tiny_model_dir, tmp_path / "iter_9.pth", r=16)
    with pytest.raises(BookError, match="does not fit the base model"):
        convert.convert(other, tmp_path / "out", config=trained.parent / "config.py")


def test_nothing_is_overwritten_without_asking(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BookError, match="not empty"):
        convert.convert(trained, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(BookError, match="does not exist"):
        convert.convert(tmp_path / "iter_404.pth", tmp_path / "x", config=trained.parent / "config.py")


def test_compare_models_reports_names_differences_and_bf16_steps(tmp_path):
    import torch
    from safetensors.torch import save_file

    from helpers import convert

    base = {"w": torch.tensor([1.0, 0.5, -2.0]).bfloat16(), "v": torch.zeros(2).bfloat16()}
    a = dict(base, w=torch.tensor([1.0, 0.5, -2.015625]).bfloat16())  # one bf16 step at 2.0
    for name, weights in (("base", base), ("a", a), ("b", dict(base, extra=torch.ones(1).bfloat16()))):
        (tmp_path / name).mkdir()
        save_file(weights, tmp_path / name / "model.safetensors")
    result = convert.compare_models(tmp_path / "a", tmp_path / "b", base_dir=tmp_path / "base")
    assert result["only_in_b"] == ["extra"] and result["tensors_differing"] == ["w"]
    assert result["max_abs_diff"] == 0.015625 and result["max_diff_ulps"] == 1.0
    assert result["changed_from_base"] == {"a": 1, "b": 0}


def test_a_saved_folder_that_lost_a_merged_tensor_is_refused(trained, tmp_path, monkeypatch):
    """The saved folder must hold the merged model: a weight saved unmerged (the base's) is caught."""
    from safetensors.torch import load_file, save_file

    original = convert._save_merged

    def save_then_undo_one_merge(model, tokenizer, out_dir, base_dir, meta):
        original(model, tokenizer, out_dir, base_dir, meta)
        tensors = load_file(out_dir / "model.safetensors")
        base = load_file(base_dir / "model.safetensors")
        name = next(n for n in sorted(tensors) if "wqkv" in n and n in base)
        tensors[name] = base[name].to(tensors[name].dtype)
        save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(convert, "_save_merged", save_then_undo_one_merge)
    with pytest.raises(BookError, match="does not hold the merged model"):
        convert.convert(trained, tmp_path / "merged")


def test_tensor_shapes_reads_the_headers_of_every_file(tiny_model_dir, tmp_path):
    shapes = convert.tensor_shapes(tiny_model_dir)
    weights = convert._weights(tiny_model_dir)
    assert {k: shape for k, (shape, _) in shapes.items()} == {k: tuple(v.shape) for k, v in weights.items()}
    assert {dtype for _, dtype in shapes.values()} == {"BF16"}  # the tiny model is saved in bf16, as the real one
    assert convert.tensor_shapes(tmp_path) == {}
