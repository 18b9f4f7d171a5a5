"""helpers.infer: the same settings, prompt and tiling on both backends; every bad input is a BookError.

The transformers backend runs on the tiny model (session fixtures). LMDeploy
has no CPU backend and is not in the CPU environment: the tests that build its
objects are skipped without it, and the mappings they check are also tested
as plain dicts.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from helpers import SAMPLE_DATA_DIR, data, infer, internvl, tiling
from helpers.errors import BookError, ModelDirError, ProfileError

HAS_LMDEPLOY = importlib.util.find_spec("lmdeploy") is not None
needs_lmdeploy = pytest.mark.skipif(not HAS_LMDEPLOY, reason="lmdeploy is not installed (GPU environment only)")

IMAGE = SAMPLE_DATA_DIR / "ex_images" / "chelsea.jpg"  # 451x300: a 3x2 grid + thumbnail = 7 tiles
PROMPT = internvl.COURSE_PROMPT
FAST = infer.GenSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    p = infer.load(tiny_model_dir, backend="transformers", device="cpu", verbose=False)
    yield p
    p.close()


# --------------------------------------------------------------------------- tiling is helpers.tiling's


def test_pixels_come_from_helpers_tiling(pipe, monkeypatch):
    calls = []
    real = tiling.image_to_pixel_values

    def spy(image, **kw):
        calls.append(kw)
        return real(image, **kw)

    monkeypatch.setattr(tiling, "image_to_pixel_values", spy)
    answer = pipe.ask(IMAGE, PROMPT, FAST)
    assert calls == [{"max_num": 12, "image_size": 448, "use_thumbnail": True, "min_num": 1}]
    assert answer.prompt_tokens == len(pipe.tokenizer(pipe.render(PROMPT, IMAGE, abbreviated=False)).input_ids)
    with infer.load_image(IMAGE) as im:
        assert pipe.tiling.tiles(*im.size) == tiling.plan_tiles(*im.size).num_tiles == 7
    # infer has no tiling code of its own
    assert not any(hasattr(infer, name) for name in ("dynamic_preprocess", "dynamic_tiles", "closest_grid"))


def test_max_num_override_changes_the_tiles(tiny_model_dir):
    p = infer.TransformersPipeline(tiny_model_dir, max_num=1)
    assert "<IMG_CONTEXT>×64</img>" in p.render(PROMPT, IMAGE)


# --------------------------------------------------------------------------- generation settings


def test_greedy_is_the_default_and_maps_the_same_way():
    g = infer.GenSettings()
    assert g.greedy and g.temperature == 0
    assert g.transformers_kwargs() == {
        "max_new_tokens": 128,
        "do_sample": False,
        "num_beams": 1,
        "repetition_penalty": 1.0,
    }
    assert g.lmdeploy_kwargs() == {"max_new_tokens": 128, "random_seed": 0, "ignore_eos": False, "do_sample": False}


def test_sampling_settings_mean_the_same_on_both_backends():
    g = infer.GenSettings(max_new_tokens=50, temperature=0.8, top_p=0.8, top_k=40, repetition_penalty=1.1, seed=7)
    hf, lmd = g.transformers_kwargs(), g.lmdeploy_kwargs()
    for key in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty"):
        assert hf[key] == lmd[key], key
    assert hf["do_sample"] is True and lmd["random_seed"] == 7
    # top_k=0 means "off" for both (transformers' own default would be 50)
    assert infer.GenSettings(temperature=1.0).transformers_kwargs()["top_k"] == 0
    assert infer.GenSettings(temperature=1.0).lmdeploy_kwargs()["top_k"] == 0


def test_greedy_with_repetition_penalty_stays_greedy_on_lmdeploy():
    lmd = infer.GenSettings(repetition_penalty=1.2).lmdeploy_kwargs()
    assert lmd["do_sample"] and lmd["top_k"] == 1 and lmd["repetition_penalty"] == 1.2
    assert infer.GenSettings(repetition_penalty=1.2).transformers_kwargs()["do_sample"] is False


def test_ignore_eos_maps_to_min_new_tokens():
    g = infer.GenSettings(max_new_tokens=9, ignore_eos=True)
    assert g.transformers_kwargs()["min_new_tokens"] == 9 and g.lmdeploy_kwargs()["ignore_eos"] is True


def test_transformers_accepts_the_kwargs_without_warnings():
    from transformers import GenerationConfig

    for g in (infer.GenSettings(), infer.GenSettings(temperature=0.7, top_p=0.9, top_k=20)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GenerationConfig(**g.transformers_kwargs()).validate()


@pytest.mark.parametrize(
    "kw",
    [
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"temperature": 3},
        {"top_p": 0},
        {"top_k": -1},
        {"repetition_penalty": 0},
    ],
)
def test_bad_generation_settings_are_explained(kw):
    with pytest.raises(infer.InferenceError, match="invalid generation settings"):
        infer.GenSettings(**kw)


@needs_lmdeploy
def test_lmdeploy_generation_config_fields():
    for g in (
        infer.GenSettings(),
        infer.GenSettings(temperature=0.7, top_p=0.9, top_k=20, seed=3),
        infer.GenSettings(repetition_penalty=1.3),
    ):
        cfg = g.to_lmdeploy()
        for key, value in g.lmdeploy_kwargs().items():
            assert getattr(cfg, key) == value, key


# --------------------------------------------------------------------------- chat template


def test_chat_template_fields_match_our_models_template(tiny_model, tiny_model_dir):
    model, _ = tiny_model
    fields = internvl.chat_template_fields(tiny_model_dir)
    conv = model.conv_template
    assert fields["meta_instruction"] == conv.system_message == model.system_message
    assert fields["system"] == conv.system_template.replace("{system_message}", "")
    assert (fields["user"], fields["assistant"]) == conv.roles
    assert fields["eosys"] == fields["eoh"] == fields["eoa"] == conv.sep
    assert fields["stop_words"] == ["<|im_end|>", "<|im_start|>"]
    gen_cfg = json.loads((tiny_model_dir / "generation_config.json").read_text())
    _, tok = tiny_model
    assert tok.convert_tokens_to_ids(fields["stop_words"]) == gen_cfg["eos_token_id"]


@pytest.mark.parametrize(
    "history, question, patches",
    [
        ([], PROMPT, [7]),
        ([(PROMPT, "第一个梗")], "再讲一个", [7]),
        ([], "Image-1: <image>\nImage-2: <image>\n有什么不同？", [3, 1]),
        ([], "没有图片的问题", []),
    ],
)
def test_build_prompt_is_the_remote_codes_query(tiny_model, history, question, patches):
    model, _ = tiny_model
    query, _ = model._build_query(question, history, patches, "<img>", "</img>", "<IMG_CONTEXT>")
    prompt = internvl.build_prompt([*history, (question, None)], tiles=patches, num_image_token=model.num_image_token)
    assert prompt.text == query


def test_another_system_message_reaches_the_prompt_and_the_model(tiny_model_dir, tiny_model):
    p = infer.load(tiny_model_dir, backend="transformers", device="cpu", verbose=False, system=internvl.JOKE_SYSTEM)
    rendered = p.render(PROMPT, IMAGE, abbreviated=False)
    assert rendered.startswith(f"{internvl.IM_START}system\n{internvl.JOKE_SYSTEM}{internvl.IM_END}")
    assert p.model.system_message == internvl.JOKE_SYSTEM  # what chat() and batch_chat() render from
    answer = p.ask(IMAGE, PROMPT, FAST)
    model, tok = tiny_model
    default, model.system_message = model.system_message, internvl.JOKE_SYSTEM
    try:
        expected = model.chat(tok, p.pixel_values(IMAGE), PROMPT, FAST.transformers_kwargs())
    finally:
        model.system_message = default
    assert answer.text == expected
    assert answer.prompt_tokens == len(p.tokenizer(rendered).input_ids)
    p.close()


def test_rendered_prompt_is_abbreviated(pipe):
    shown = pipe.render(PROMPT, IMAGE)
    assert shown.count("<IMG_CONTEXT>") == 1 and "<img><IMG_CONTEXT>×448</img>\n请你" in shown
    assert shown.startswith("<|im_start|>system\n你是由上海人工智能实验室") and shown.endswith(
        "<|im_start|>assistant\n"
    )


@needs_lmdeploy
def test_lmdeploy_chat_template_config_renders_the_same_prompt(tiny_model_dir):
    from lmdeploy.model import get_chat_template

    cfg = infer.chat_template_config(tiny_model_dir)
    assert {k: v for k, v in vars(cfg).items() if v is not None} == internvl.chat_template_fields(tiny_model_dir)
    template = get_chat_template(str(tiny_model_dir), cfg)
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert template.messages2prompt(messages) == internvl.build_prompt([(PROMPT, "a1"), ("q2", None)]).text


@needs_lmdeploy
def test_lmdeploy_preprocessing_gives_our_token_ids_and_pixels(pipe, tiny_model_dir):
    """LMDeploy's own InternVL preprocessor, fed by our messages, yields our prompt ids and tiles."""
    import asyncio

    from lmdeploy.model import get_chat_template
    from lmdeploy.serve.processors import MultimodalProcessor
    from lmdeploy.tokenizer import Tokenizer
    from lmdeploy.vl.model.internvl import InternVLVisionModel
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    vision = InternVLVisionModel(str(tiny_model_dir), hf_config=cfg, backend="pytorch", trust_remote_code=True)
    vision.build_preprocessor()
    template = get_chat_template(str(tiny_model_dir), infer.chat_template_config(tiny_model_dir))
    for history, question in [([], PROMPT), ([(PROMPT, "a1")], "q2")]:
        req = pipe._request(IMAGE, question, history, FAST)
        messages = asyncio.run(
            MultimodalProcessor.async_parse_multimodal_item(infer.LMDeployPipeline._messages(pipe, req), None)
        )
        messages = vision.preprocess(messages)
        out = vision.to_pytorch(messages, template, Tokenizer(str(tiny_model_dir)))
        assert out["input_ids"] == pipe.tokenizer(req.full_prompt).input_ids
        pixels = next(m for m in messages if m["role"] == "preprocess")["content"][0]["pixel_values"]
        assert torch.equal(pixels.float(), pipe._pixels(req.images).float())


def test_chat_template_config_without_lmdeploy_says_to_use_the_dict(monkeypatch):
    if HAS_LMDEPLOY:
        pytest.skip("lmdeploy is installed")
    with pytest.raises(infer.BackendError, match="chat_template_fields"):
        infer.chat_template_config(template="internlm2-chat")


# --------------------------------------------------------------------------- answers on the tiny model


def test_single_answer_is_the_remote_codes_chat(pipe, tiny_model):
    model, tok = tiny_model
    answer = pipe.ask(IMAGE, PROMPT, FAST)
    with infer.load_image(IMAGE) as im:
        pixels = tiling.image_to_pixel_values(im, max_num=12)
    assert answer.text == model.chat(tok, pixels, PROMPT, {"max_new_tokens": 6, "do_sample": False})
    assert 1 <= answer.tokens <= 6 and answer.prompt_tokens > 7 * 64
    assert answer.backend == "transformers" and answer.seconds > 0 and 0 < answer.first_token_s <= answer.seconds
    assert answer.history == [(PROMPT, answer.text)]
    assert pipe.ask(IMAGE, PROMPT, FAST).text == answer.text, "greedy is deterministic"


def test_seeded_sampling_repeats(pipe):
    g = infer.GenSettings(max_new_tokens=6, temperature=1.0, seed=5)
    assert pipe.ask(IMAGE, PROMPT, g).text == pipe.ask(IMAGE, PROMPT, g).text


def test_batch_matches_single_answers_and_shows_progress(pipe, capsys):
    ds = data.load_sample("eval")
    images = [ds.image_path(r) for r in ds][:3]
    answers = pipe.ask_batch(images, PROMPT, FAST, batch_size=2, progress=True)
    assert [a.text for a in answers] == [pipe.ask(im, PROMPT, FAST).text for im in images]
    assert all(1 <= a.tokens <= 6 for a in answers)
    assert "3/3" in capsys.readouterr().err


def test_multi_turn_chat_keeps_history(pipe, tiny_model):
    model, tok = tiny_model
    chat = pipe.chat(IMAGE, FAST)
    first = chat.ask(PROMPT)
    second = chat.ask("再讲一个")
    assert chat.history == [(PROMPT, first.text), ("再讲一个", second.text)]
    assert "<|im_start|>user\n再讲一个<|im_end|>" in chat.render("第三个")
    with infer.load_image(IMAGE) as im:
        pixels = tiling.image_to_pixel_values(im, max_num=12)
    expected = model.chat(
        tok, pixels, "再讲一个", {"max_new_tokens": 6, "do_sample": False}, history=[(PROMPT, first.text)]
    )
    assert second.text == expected


def test_streaming_yields_the_same_answer(pipe):
    stream = pipe.stream(IMAGE, PROMPT, FAST)
    pieces = list(stream)
    assert pieces and "".join(pieces).strip() == stream.answer.text == pipe.ask(IMAGE, PROMPT, FAST).text
    assert stream.answer.tokens >= 1


def test_text_only_and_two_image_prompts(pipe):
    assert isinstance(pipe.ask(None, "你好", FAST).text, str)
    two = pipe.ask([IMAGE, IMAGE], "Image-1: <image>\nImage-2: <image>\n有什么不同？", FAST)
    assert two.prompt_tokens > 2 * 7 * 64


def test_answer_dataset_and_files(pipe, tmp_path):
    ds = data.load_sample("eval").subset([0, 1], split="eval")
    rows = infer.answer_dataset(pipe, ds, FAST, progress=False)
    assert [r["id"] for r in rows] == [ds[0].id, ds[1].id]
    assert set(rows[0]) == {
        "split",
        "id",
        "image",
        "prompt",
        "reference",
        "answer",
        "seconds",
        "tokens",
        "prompt_tokens",
    }
    assert rows[0]["reference"] == ds[0].caption and rows[0]["split"] == "eval"
    path = infer.save_answers(tmp_path / "baseline_answers.json", rows, backend="transformers")
    back = infer.load_answers(path)
    assert back["answers"] == rows and back["backend"] == "transformers"
    with pytest.raises(BookError, match="run notebook 02 .*notebooks/02_baseline_inference"):
        infer.load_answers(tmp_path / "missing.json")


# --------------------------------------------------------------------------- bad input


def test_missing_image(pipe):
    with pytest.raises(infer.ImageError, match="image not found: .*nope.jpg.*Fix"):
        pipe.ask("nope.jpg", PROMPT, FAST)


def test_unreadable_image(pipe, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(infer.ImageError, match="cannot read .*broken.jpg.*download or save it again"):
        pipe.ask(bad, PROMPT, FAST)


def test_unsupported_file_type(pipe, tmp_path):
    pdf = tmp_path / "slides.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    with pytest.raises(infer.ImageError, match=r"unsupported file type '\.pdf'.*Fix: convert"):
        pipe.ask(pdf, PROMPT, FAST)
    with pytest.raises(infer.ImageError, match="is a folder"):
        pipe.ask(tmp_path, PROMPT, FAST)


def test_prompt_without_image_tag_is_fixed_and_said(pipe):
    with pytest.warns(infer.PromptWarning, match=r"inserted '<image>\\n'"):
        answer = pipe.ask(IMAGE, "请你根据这张图片，讲一个脑洞大开的梗", FAST)
    assert answer.prompt == PROMPT
    with pytest.warns(infer.PromptWarning, match="2 prompt"):
        pipe.ask_batch([IMAGE, IMAGE], "讲个梗", FAST, progress=False)


def test_more_images_than_image_tags(pipe):
    with pytest.raises(infer.PromptError, match="2 images were given but the prompt has 1 <image>.*Fix"):
        pipe.ask([IMAGE, IMAGE], PROMPT, FAST)
    with pytest.raises(infer.PromptError, match="2 <image> placeholder.*1 image"):
        pipe.ask(IMAGE, "<image><image>讲个梗", FAST)
    with pytest.raises(infer.PromptError, match="exactly one image per prompt"):
        pipe.ask_batch([[IMAGE, IMAGE]], "<image><image>", FAST, progress=False)
    with pytest.raises(infer.PromptError, match="empty"):
        pipe.ask(IMAGE, "  ", FAST)


def test_conversation_longer_than_session_len(tiny_model_dir):
    short = infer.TransformersPipeline(tiny_model_dir, session_len=400)
    with pytest.raises(infer.SessionLengthError, match=r"7 image tiles x 64 tokens.*session_len=400.*Fix"):
        short.ask(IMAGE, PROMPT, FAST)
    history = [("很长的问题" * 60, "很长的回答" * 60)] * 3
    with pytest.raises(infer.SessionLengthError, match="3 earlier turn"):
        short.ask(None, "还有吗", FAST, history=history)


def test_not_an_internvl_folder(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        infer.load(tmp_path / "nothing", backend="transformers", verbose=False)
    with pytest.raises(ModelDirError, match="has no config.json"):
        infer.load(tmp_path, backend="transformers", verbose=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelDirError, match="holds a llama model .*LlamaForCausalLM.*not InternVL2"):
        infer.load(tmp_path, backend="transformers", verbose=False)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        internvl.read_config(tmp_path)


def test_internvl_config_without_tokenizer_or_weights(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(ModelDirError, match="cannot load the tokenizer"):
        infer.load(tmp_path, backend="transformers", verbose=False)


def test_lmdeploy_forced_without_gpu_or_package(monkeypatch):
    from helpers import env

    with pytest.raises(infer.BackendError, match="needs a CUDA GPU.*Fix: use backend='transformers'"):
        infer.choose_backend("lmdeploy", "cpu")
    assert issubclass(infer.BackendError, ProfileError)
    # a GPU machine without lmdeploy: forced is an error, auto falls back and says why in one line
    monkeypatch.setattr(env, "resolve_device", lambda device="auto": "cuda")
    monkeypatch.setattr(env, "probe_lmdeploy", lambda: env.Probe(False, "lmdeploy is not installed."))
    with pytest.raises(infer.BackendError, match="lmdeploy is not installed. Fix: install LMDeploy"):
        infer.choose_backend("lmdeploy")
    choice = infer.choose_backend("auto")
    assert choice.backend == "transformers" and "\n" not in choice.reason
    assert "LMDeploy not used: lmdeploy is not installed" in choice.reason
    monkeypatch.setattr(env, "probe_lmdeploy", lambda: env.Probe(True, "lmdeploy 0.18.0 imports."))
    assert infer.choose_backend("auto").backend == "lmdeploy"


def test_auto_on_cpu_falls_back_with_one_line(monkeypatch):
    choice = infer.choose_backend("auto", "cpu")
    assert (choice.backend, choice.device) == ("transformers", "cpu") and "CUDA GPU" in choice.reason
    with pytest.raises(infer.InferenceError, match="unknown"):
        infer.choose_backend("vllm")


def test_lmdeploy_engine_errors_are_book_errors(tiny_model_dir, monkeypatch):
    """A failing lmdeploy.pipeline (e.g. TurboMind's CUDA-12 extension) becomes a BackendError."""
    import sys
    import types

    class Cfg:
        def __init__(self, **kw):
            self.kw = kw

    fake = types.ModuleType("lmdeploy")
    fake.__version__ = "0.0-fake"
    fake.PytorchEngineConfig = fake.TurbomindEngineConfig = fake.ChatTemplateConfig = Cfg

    def pipeline(
        model_path, backend_config=None, chat_template_config=None, log_level="ERROR", trust_remote_code=False
    ):
        raise ImportError("libcublas.so.12: cannot open shared object file: No such file or directory")

    fake.pipeline = pipeline
    monkeypatch.setitem(sys.modules, "lmdeploy", fake)
    with pytest.raises(infer.BackendError, match=r"turbomind engine.*libcublas\.so\.12.*try engine='pytorch'"):
        infer.LMDeployPipeline(tiny_model_dir, engine="turbomind")
    with pytest.raises(infer.InferenceError, match="engine='vllm' is unknown"):
        infer.LMDeployPipeline(tiny_model_dir, engine="vllm")


# --------------------------------------------------------------------------- command line


def test_cli_answers(tiny_model_dir, capsys):
    code = infer.main(
        [
            "--model",
            str(tiny_model_dir),
            "--image",
            str(IMAGE),
            "--prompt",
            PROMPT,
            "--backend",
            "transformers",
            "--max-new-tokens",
            "4",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    answer = json.loads(out)
    assert answer["backend"] == "transformers" and 1 <= answer["tokens"] <= 4 and answer["prompt"] == PROMPT


def test_cli_streams_and_reports_bad_input(tiny_model_dir, capsys):
    assert (
        infer.main(
            [
                "--model",
                str(tiny_model_dir),
                "--image",
                str(IMAGE),
                "--prompt",
                "讲个梗",
                "--device",
                "cpu",
                "--max-new-tokens",
                "3",
                "--stream",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "backend: transformers on cpu" in captured.out and "tokens/s" in captured.err
    assert "note: the prompt has no <image>" in captured.err
    assert infer.main(["--model", str(tiny_model_dir), "--image", "missing.png"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: image not found" in "\n" + err and "Traceback" not in err


def test_turbomind_that_cannot_load_is_not_silently_replaced(tiny_model_dir, monkeypatch):
    """LMDeploy falls back to its PyTorch engine when TurboMind's extension is missing; we say so instead."""
    import sys
    import types

    fake = types.ModuleType("lmdeploy")
    fake.__path__ = []  # a package, so that lmdeploy.turbomind can be imported from sys.modules
    fake.__version__ = "0.0-fake"
    fake.PytorchEngineConfig = fake.TurbomindEngineConfig = fake.ChatTemplateConfig = lambda **kw: kw
    fake.pipeline = lambda *a, **kw: pytest.fail("the pipeline must not start")
    tm = types.ModuleType("lmdeploy.turbomind")
    tm.is_available = lambda: False
    tm._import_error = OSError("libcublas.so.12: cannot open shared object file: No such file or directory")
    fake.turbomind = tm
    monkeypatch.setitem(sys.modules, "lmdeploy", fake)
    monkeypatch.setitem(sys.modules, "lmdeploy.turbomind", tm)
    with pytest.raises(infer.BackendError, match=r"TurboMind extension does not load.*libcublas\.so\.12.*CUDA 12"):
        infer.LMDeployPipeline(tiny_model_dir, engine="turbomind")


def test_a_language_model_that_cannot_generate_is_named_at_load(tiny_model_dir, monkeypatch):
    """The official InternLM2 under transformers >= 4.50 has no generate(): say so when loading, with the fix."""
    import transformers
    from transformers import AutoModel

    from helpers.errors import BackendError

    real = AutoModel.from_pretrained

    def without_generate(*args, **kwargs):
        model = real(*args, **kwargs)
        lm = model.language_model
        lm.__class__ = type("NoGenerate", (torch.nn.Module,), {"forward": type(lm).forward})
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", without_generate)
    with pytest.raises(BackendError, match=r"cannot generate under transformers .*backend='lmdeploy'"):
        infer.TransformersPipeline(tiny_model_dir)
