"""Advice in the book's pages, checked against the code it describes."""

from __future__ import annotations

import ast
import importlib.util
import re

import pytest

from helpers import REPO_DIR, internvl

TROUBLESHOOTING = REPO_DIR / "book" / "guides" / "troubleshooting.md"


def _python_blocks(path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _chat_template_block() -> str:
    blocks = [b for b in _python_blocks(TROUBLESHOOTING) if "chat_template_config = ChatTemplateConfig(" in b]
    assert len(blocks) == 1, "troubleshooting.md should show one explicit ChatTemplateConfig"
    return blocks[0]


def test_documented_chat_template_config_is_the_books_template():
    """The fields the troubleshooting page tells learners to pass are exactly helpers.internvl's."""
    call = next(
        node
        for node in ast.walk(ast.parse(_chat_template_block()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ChatTemplateConfig"
    )
    documented = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert documented == internvl.chat_template_fields(template="internlm2-chat")


@pytest.mark.skipif(importlib.util.find_spec("lmdeploy") is None, reason="lmdeploy: GPU serving environment only")
def test_documented_chat_template_config_renders_the_models_prompt(tiny_model_dir):
    """Run the page's advice with the real LMDeploy: the same prompt as the model's own chat()."""
    from lmdeploy import ChatTemplateConfig
    from lmdeploy.model import get_chat_template

    code = (
        _chat_template_block()
        .split("pipe = pipeline(")[0]
        .replace("from lmdeploy import ChatTemplateConfig, pipeline", "")
    )
    scope = {"ChatTemplateConfig": ChatTemplateConfig}
    exec(code, scope)
    template = get_chat_template(str(tiny_model_dir), scope["chat_template_config"])
    messages = [
        {"role": "user", "content": internvl.COURSE_PROMPT},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    expected = internvl.build_prompt([(internvl.COURSE_PROMPT, "a1"), ("q2", None)]).text
    assert template.messages2prompt(messages) == expected
