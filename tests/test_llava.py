"""helpers.llava: the tiny LLaVA parts load in XTuner's code; data, repeat, and the checks before XTuner runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers import SAMPLE_DATA_DIR, llava
from helpers.data import validate
from helpers.errors import BookError

XTUNER_DIR = Path(importlib.util.find_spec("xtuner").submodule_search_locations[0])
STOCK_DIR = XTUNER_DIR / "configs" / "llava" / "internlm2_chat_1_8b_clip_vit_large_p14_336"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return llava.ensure_models(tmp_path_factory.mktemp("llava-models"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return llava.write_datasets(tmp_path_factory.mktemp("llava-data"), repeats=3)


def test_repeat_keeps_order_and_copies():
    records = [{"id": "a"}, {"id": "b"}]
    out = llava.repeat(records, 3)
    assert [r["id"] for r in out] == ["a", "b"] * 3
    out[0]["id"] = "changed"
    assert records[0]["id"] == "a"
    with pytest.raises(BookError, match="positive integer"):
        llava.repeat(records, 0)


def test_datasets_are_llava_format_and_the_validator_accepts_them(datasets):
    qa = json.loads(datasets.qa_unique.read_text())
    assert len(json.loads(datasets.qa_train.read_text())) == 3 * len(qa)
    first = qa[0]["conversations"]
    assert first[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in first[1:])
    assert [t["from"] for t in first] == ["human", "gpt"] * len(llava.QA_TURNS)
    held = {r["id"] for r in json.loads(datasets.qa_heldout.read_text())}
    assert held and not held & {r["id"] for r in qa}
    for path in (datasets.captions, datasets.qa_train, datasets.qa_heldout):
        report = validate(path, image_folder=datasets.image_folder)
        assert report.ok, str(report)


def test_a_qa_record_without_image_token_is_an_error_naming_the_record(tmp_path):
    records = llava.qa_records(llava.photos("heldout"))
    records[1]["conversations"][0]["value"] = "What is in the picture?"
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(records, indent=1))
    report = validate(path, image_folder=SAMPLE_DATA_DIR)
    assert not report.ok
    [problem] = [p for p in report.problems if p.kind == "missing_image_token"]
    assert problem.index == 1 and problem.line is not None


def test_tiny_parts_load_in_xtuners_llava_model_and_dataset(models, datasets):
    import torch
    from mmengine.config import ConfigDict
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel
    from xtuner.dataset import LLaVADataset
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.model import LLaVAModel
    from xtuner.utils import PROMPT_TEMPLATE

    from helpers.compat import llava_dataset_processes, llava_on_cpu

    llava_on_cpu()
    llava_dataset_processes()
    llm, vit = models
    tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=str(llm), trust_remote_code=True)
    processor = dict(type=CLIPImageProcessor.from_pretrained, pretrained_model_name_or_path=str(vit))
    model = LLaVAModel(
        llm=ConfigDict(
            type=AutoModelForCausalLM.from_pretrained,
            pretrained_model_name_or_path=str(llm),
            trust_remote_code=True,
            torch_dtype=torch.float32,
        ),
        visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained, pretrained_model_name_or_path=str(vit)),
        freeze_llm=True,
        freeze_visual_encoder=True,
    )
    assert model.projector.config.visual_hidden_size == 64 and model.projector.config.llm_hidden_size == 128
    dataset = LLaVADataset(
        image_folder=str(datasets.image_folder),
        image_processor=processor,
        data_path=str(datasets.qa_unique),
        tokenizer=tokenizer,
        dataset_map_fn=llava_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.internlm2_chat),
        max_length=1472,
        pad_image_to_square=True,
    )
    assert len(dataset) == len(llava.photos("train"))
    sample = dataset[0]
    assert tuple(sample["pixel_values"].shape) == (3, 336, 336)
    batch = default_collate_fn([sample])
    loss = model(batch["data"], mode="loss")["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.llm.parameters())  # frozen, as in the pretrain stage


def _stock(name: str) -> str:
    return next(STOCK_DIR.rglob(f"{name}.py")).read_text(encoding="utf-8")


def _finetune_config(tmp_path, models, datasets, pretrained_pth) -> Path:
    llm, vit = models
    edits = llava.course_edits(
        "finetune",
        llm=llm,
        visual_encoder=vit,
        data_path=datasets.qa_train,
        image_folder=datasets.image_folder,
        evaluation_image=SAMPLE_DATA_DIR / "ex_images" / "chelsea.jpg",
        pretrained_pth=pretrained_pth,
    )
    _, run = llava.edit_stock(
        _stock(llava.FINETUNE_CONFIG), edits, llava.machine_edits("finetune", cuda=False, max_iters=4, lora_r=8)
    )
    path = tmp_path / "finetune.py"
    path.write_text(run)
    return path


def test_edits_apply_once_each_to_the_stock_configs(models, datasets):
    llm, vit = models
    for stage, name in (("pretrain", llava.PRETRAIN_CONFIG), ("finetune", llava.FINETUNE_CONFIG)):
        edits = llava.course_edits(
            stage,
            llm=llm,
            visual_encoder=vit,
            data_path=datasets.captions,
            image_folder=datasets.image_folder,
            evaluation_image="/x.jpg",
            pretrained_pth="/p.pth",
        )
        machine = llava.machine_edits(stage, cuda=False, max_iters=8, seed=3)
        course, run = llava.edit_stock(_stock(name), edits, machine)
        assert "batch_size = 1  # per_device" in course and "AmpOptimWrapper," in course
        assert "type=OptimWrapper," in run and "max_iters=8" in run and 'backend="gloo"' in run
        assert "randomness = dict(seed=3," in run and "torch_dtype=torch.float16" not in run
        assert ("pretrained_pth = '/p.pth'" in course) == (stage == "finetune")
    with pytest.raises(BookError, match="pretrained_pth"):
        llava.course_edits(
            "finetune", llm=llm, visual_encoder=vit, data_path="/d.json", image_folder="/", evaluation_image="/x"
        )


def test_finetune_config_without_or_with_a_missing_pretrained_pth_is_refused(tmp_path, models, datasets):
    path = _finetune_config(tmp_path, models, datasets, tmp_path / "missing" / "iter_9.pth")
    with pytest.raises(BookError, match="does not exist. Run the pretrain stage first"):
        llava.check_finetune_config(path)
    path.write_text(
        path.read_text().replace(f"pretrained_pth = '{tmp_path}/missing/iter_9.pth'", "pretrained_pth = None")
    )
    with pytest.raises(BookError, match="pretrained_pth is not set"):
        llava.check_finetune_config(path)
    pth = tmp_path / "iter_2.pth"
    pth.write_bytes(b"x")
    path = _finetune_config(tmp_path, models, datasets, pth)
    assert llava.check_finetune_config(path) == pth
    folder = tmp_path / "ds" / "iter_3.pth"  # a --deepspeed pretrain saves its checkpoint as a folder
    folder.mkdir(parents=True)
    path = _finetune_config(tmp_path, models, datasets, folder)
    assert llava.check_finetune_config(path) == folder


def test_pth_to_hf_on_the_wrong_config_is_refused(tmp_path, models, datasets):
    import torch

    llm, vit = models
    projector = {"projector.model.0.weight": torch.zeros(128, 64), "projector.model.0.bias": torch.zeros(128)}
    pretrain_pth, finetune_pth = tmp_path / "pre.pth", tmp_path / "ft.pth"
    torch.save({"state_dict": projector}, pretrain_pth)
    lora = {"llm.base_model.model.output.lora_A.default.weight": torch.zeros(8, 128)}
    torch.save({"state_dict": {**projector, **lora}}, finetune_pth)
    finetune_cfg = _finetune_config(tmp_path, models, datasets, pretrain_pth)
    edits = llava.course_edits(
        "pretrain", llm=llm, visual_encoder=vit, data_path=datasets.captions,
        image_folder=datasets.image_folder, evaluation_image="/x.jpg",
    )  # fmt: skip
    pretrain_cfg = tmp_path / "pretrain.py"
    pretrain_cfg.write_text(llava.edit_stock(_stock(llava.PRETRAIN_CONFIG), edits)[1])

    assert llava.check_pth_to_hf(pretrain_cfg, pretrain_pth) == "pretrain"
    assert llava.check_pth_to_hf(finetune_cfg, finetune_pth) == "finetune"
    with pytest.raises(BookError, match="holds LoRA adapters .* is a pretrain config"):
        llava.check_pth_to_hf(pretrain_cfg, finetune_pth)
    with pytest.raises(BookError, match="holds no LoRA adapters .* untrained adapters"):
        llava.check_pth_to_hf(finetune_cfg, pretrain_pth)
    torch.save({"state_dict": {"projector.model.0.weight": torch.zeros(2048, 1024)}}, tmp_path / "big.pth")
    with pytest.raises(BookError, match="another model size"):
        llava.check_pth_to_hf(pretrain_cfg, tmp_path / "big.pth")
    with pytest.raises(BookError, match="not LLaVAModel"):
        llava.config_stage(next((XTUNER_DIR / "configs" / "internvl" / "v2").glob("*2b_qlora_finetune.py")))


def test_presets_have_the_real_sizes():
    assert llava.LLM_PRESETS["internlm2-chat-1.8b"]["hidden_size"] == 2048
    assert llava.LLM_PRESETS["internlm2-chat-1.8b"]["num_hidden_layers"] == 24
    real = llava.VISION_PRESETS["clip-vit-large-patch14-336"]
    assert (real["hidden_size"], real["patch_size"], real["num_hidden_layers"]) == (1024, 14, 24)


def test_score_answers_counts_which_text_an_answer_is_closer_to():
    rows = [
        {
            "answer": "The picture shows a cat.",
            "reference": "The picture shows a cat.",
            "caption": "A tabby cat looks up.",
        },
        {
            "answer": "A tabby cat looks up.",
            "reference": "The picture shows a cat.",
            "caption": "A tabby cat looks up.",
        },
    ]
    s = llava.score_answers(rows)
    assert s["closer to the caption"] == 0.5 and s["answers"] == 2
    assert 0 < s["chrF vs caption"] < 100 and 0 < s["chrF vs reference"] < 100
