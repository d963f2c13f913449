"""A GGUF model's chat template (Jinja), rendered as llama-cpp-python and Transformers do.

The same environment as llama-cpp-python's `Jinja2ChatFormatter` (which the llama.cpp
engine used before; importing it brings the package's high-level API and numpy into every
worker, see llama_lib.py): an immutable sandbox with `trim_blocks` and `lstrip_blocks`,
Transformers' `{% generation %}` pass-through and loop controls, `tojson` without ASCII
escaping, and the helpers templates call (`raise_exception`, `strftime_now`). Jinja is
imported on first render: instances that never render a chat (completions, embeddings)
never load it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

__all__ = ["ChatTemplate"]


class ChatTemplate:
    """One template; `render` raises ValueError for a template that does not compile
    or that rejects the messages (its own `raise_exception`, a type error, the sandbox)."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        self.source = source
        self._bos = bos_token
        self._eos = eos_token
        self._compiled: Any = None

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        import jinja2

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        try:
            return str(
                self._template().render(
                    messages=messages,
                    eos_token=self._eos,
                    bos_token=self._bos,
                    raise_exception=raise_exception,
                    add_generation_prompt=add_generation_prompt,
                    functions=None,
                    function_call=None,
                    tools=tools,
                    tool_choice=None,
                    strftime_now=_strftime_now,
                )
            )
        except (jinja2.TemplateError, TypeError) as exc:
            raise ValueError(str(exc)) from exc

    def _template(self) -> Any:
        if self._compiled is None:
            self._compiled = _environment().from_string(self.source)
        return self._compiled


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        """Transformers' `{% generation %}…{% endgeneration %}`: its body, as is."""

        tags = {"generation"}  # noqa: RUF012 (jinja2 declares it a plain attribute)

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    return environment


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
