"""helpers.compat.use_sdpa_attention: the official InternVL2 code with SDPA computes what its eager attention does."""

from __future__ import annotations

import pytest

from helpers import compat, tiny
from helpers.errors import UsageError

torch = pytest.importorskip("torch")

# float32 on a CPU: SDPA and eager attention differ only by the order of floating-point sums
ATOL = 1e-5


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    pytest.importorskip("timm")  # the official modeling_intern_vit.py imports it
    return tiny.build("tiny", tmp_path_factory.mktemp("official") / "m", remote_code="official")


def _load(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, trust_remote_code=True, torch_dtype=torch.float32)


def _loss_and_grads(model, ids, pixels, mask):
    model.zero_grad()
    vit = model.extract_feature(pixels)
    logits = model.language_model(input_ids=ids, attention_mask=mask).logits
    loss = logits.float().pow(2).mean() + vit.pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), vit.detach(), grads


def test_official_code_builds_and_loads(official_dir):
    model = _load(official_dir)
    assert (official_dir / "modeling_internlm2.py").read_text().count("INTERNLM2_ATTENTION_CLASSES") >= 1
    assert type(model).__module__.startswith("transformers_modules.")
    assert type(model.language_model.model.layers[0].attention).__name__ == "InternLM2Attention"


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "padded"])
def test_sdpa_patch_matches_eager_logits_and_gradients(official_dir, padded):
    torch.manual_seed(0)
    eager, patched = _load(official_dir).train(), _load(official_dir).train()
    counts = compat.use_sdpa_attention(patched)
    layers = patched.config.llm_config.num_hidden_layers
    assert counts == {
        "internlm2_attention": layers,
        "intern_vit_attention": patched.config.vision_config.num_hidden_layers,
        "internlm2_model": 1,
    }
    assert compat.use_sdpa_attention(patched) == dict.fromkeys(counts, 0)  # idempotent
    ids = torch.randint(3, 700, (2, 48))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 40:] = 0  # the second sample is 8 tokens shorter: a real padding mask, not only causal
    pixels = torch.randn(3, 3, 448, 448)
    a_logits, a_vit, a_grads = _loss_and_grads(eager, ids, pixels, mask)
    b_logits, b_vit, b_grads = _loss_and_grads(patched, ids, pixels, mask)
    keep = mask.bool()
    assert torch.allclose(a_logits[keep], b_logits[keep], atol=ATOL, rtol=0)
    assert torch.allclose(a_vit, b_vit, atol=ATOL, rtol=0)
    assert a_grads.keys() == b_grads.keys() and len(a_grads) > 10
    worst = max((a_grads[n] - b_grads[n]).abs().max().item() for n in a_grads)
    assert worst < ATOL, worst


def test_sdpa_patch_changes_the_computation_path(official_dir):
    """The patched model really runs SDPA (a test that could not fail would prove nothing)."""
    model = _load(official_dir).eval()
    compat.use_sdpa_attention(model)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            model.language_model(input_ids=torch.randint(3, 700, (1, 16)))
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert calls == [True] * model.config.llm_config.num_hidden_layers  # no padding: causal, no mask


def test_sdpa_patch_leaves_the_books_own_code_alone(tiny_model_dir):
    assert compat.use_sdpa_attention(_load(tiny_model_dir)) == {
        "internlm2_attention": 0,
        "intern_vit_attention": 0,
        "internlm2_model": 0,
    }


@pytest.mark.parametrize("chunk", [4096, 5], ids=["one-chunk", "chunks-of-5"])
def test_labelled_cross_entropy_equals_the_full_logits_loss(chunk):
    """The loss from the labelled tokens' logits only is XTuner's loss over all logits, value and gradients."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 12, 16, requires_grad=True)
    labels = torch.full((2, 12), -100)
    labels[0, 7:] = torch.randint(0, 50, (5,))  # an answer at the end of each sample, as in XTuner's data
    labels[1, 9:] = torch.randint(0, 50, (3,))

    full = torch.nn.CrossEntropyLoss()(head(hidden)[:, :-1].float().reshape(-1, 50), labels[:, 1:].reshape(-1))
    full_grads = torch.autograd.grad(full, (hidden, head.weight))
    ours = compat.labelled_cross_entropy(hidden, head, labels, chunk_tokens=chunk)
    our_grads = torch.autograd.grad(ours, (hidden, head.weight))
    assert ours.item() == pytest.approx(full.item(), abs=1e-6)
    for a, b in zip(full_grads, our_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert compat.labelled_cross_entropy(hidden, head, torch.full((2, 12), -100)).item() == 0.0


def test_labelled_loss_chunks_do_not_shift_which_layers_are_checkpointed(monkeypatch):
    """With ``checkpointing(every=2)`` the loss's own checkpointed chunks must not count as layers."""
    import torch.utils.checkpoint as cp

    seen = []

    def spy(function, *args, **kwargs):  # PyTorch's checkpoint, recording what it was given
        seen.append(function.__name__)
        return function(*args)

    monkeypatch.setattr(cp, "checkpoint", spy)
    compat.checkpointing(False, every=2)  # wraps spy: every second layer call reaches it

    def layer(x):
        return x * 2

    x = torch.ones(3, requires_grad=True)
    for _ in range(2):
        cp.checkpoint(layer, x)
    head, labels = torch.nn.Linear(4, 7, bias=False), torch.randint(0, 7, (1, 4))
    compat.labelled_cross_entropy(torch.randn(1, 4, 4), head, labels, chunk_tokens=1)  # 3 labelled tokens
    for _ in range(2):
        cp.checkpoint(layer, x)
    assert seen == ["layer", "chunk_loss", "chunk_loss", "chunk_loss", "layer"]


def test_epoch_pause_takes_out_mmengines_sleep_between_passes(monkeypatch):
    """mmengine's loop sleeps 2 s at every pass over the data; epoch_pause(0) skips it, epoch_pause(s) waits s."""
    import time

    from mmengine.runner import loops

    monkeypatch.setattr(loops, "time", loops.time)  # put mmengine's module back afterwards
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    def three_passes() -> list[int]:
        it = loops._InfiniteDataloaderIterator([1, 2])  # a two-batch "dataloader"
        return [next(it) for _ in range(6)]

    assert three_passes() == [1, 2, 1, 2, 1, 2] and slept == [2, 2]  # mmengine's own pause, twice
    slept.clear()
    assert compat.epoch_pause(0) == 0
    assert three_passes() == [1, 2, 1, 2, 1, 2] and slept == []
    compat.epoch_pause(0.5)  # patching again wraps the real module, not the shim
    three_passes()
    assert slept == [0.5, 0.5] and loops.time._book_real is time
    with pytest.raises(UsageError, match="mmengine's own pause is 2"):
        compat.epoch_pause(-1)


def test_compile_layers_marks_every_transformer_layer_of_the_model(tiny_model):
    """The 'layers' lever compiles InternLM2's decoder layers and InternViT's encoder layers, nothing else."""
    import copy

    from helpers.compile_layers import compile_layers

    model = copy.deepcopy(tiny_model[0])
    counts = compile_layers(model)
    assert counts == {
        "InternLM2DecoderLayer": model.config.llm_config.num_hidden_layers,
        "InternVisionEncoderLayer": model.config.vision_config.num_hidden_layers,
    }
    compiled = {type(m).__name__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == set(counts)


def test_official_config_flag_is_carried_to_transformers5(monkeypatch):
    """transformers 5 renamed is_composition to has_no_defaults_at_init; remote-code configs get both."""
    import transformers
    from transformers.models.auto import configuration_auto as auto

    class Composite:  # like the official InternVLChatConfig: cannot be built without arguments
        is_composition = True
        has_no_defaults_at_init = False

    class Plain:
        has_no_defaults_at_init = False

    monkeypatch.setattr(transformers, "__version__", "4.48.0")
    assert compat.official_config_on_transformers5() is False  # transformers 4.x reads is_composition itself
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    monkeypatch.setattr(auto, "get_class_from_dynamic_module", lambda ref, *a, **k: {"c": Composite, "p": Plain}[ref])
    assert compat.official_config_on_transformers5() is True
    assert compat.official_config_on_transformers5() is True  # applied twice, wrapped once
    assert auto.get_class_from_dynamic_module("c") is Composite and Composite.has_no_defaults_at_init is True
    assert auto.get_class_from_dynamic_module("p") is Plain and Plain.has_no_defaults_at_init is False


def test_compile_layers_hook_refuses_a_model_without_internvl2_layers():
    from types import SimpleNamespace

    import torch

    from helpers.compile_layers import CompileLayersHook
    from helpers.errors import ModelDirError

    runner = SimpleNamespace(model=torch.nn.Linear(2, 2), logger=SimpleNamespace(info=lambda _m: None))
    with pytest.raises(ModelDirError, match="torch_compile='none'"):
        CompileLayersHook().before_train(runner)


def test_only_the_official_config_needs_arguments(tiny_model_dir, tmp_path):
    """The official InternVLChatConfig cannot be built bare (why transformers 5 needs the fix); the book's can."""
    from helpers import tiny

    official = tiny.build("tiny", tmp_path / "official", remote_code="official")
    assert compat.config_needs_arguments(official) is True
    assert compat.config_needs_arguments(tiny_model_dir) is False
