"""The GBNF behind structured output and forced tool calls (llama.cpp engine): JSON
strings in it never admit raw control characters, which JSON forbids."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from daemon.engines.llama_sampling import (
    JSON_STRING_CHAR,
    LOOSE_STRING_CHAR,
    structured_grammar,
)

SCHEMAS: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}},
    {"type": "array", "items": {"type": "string", "minLength": 2}},
    {"type": "object", "additionalProperties": {"type": "string"}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_strings_exclude_control_characters(schema: dict[str, Any]) -> None:
    rules = structured_grammar({"schema": schema}).splitlines()
    char_rules = [r for r in rules if r.startswith("char ::=")]
    assert char_rules, rules  # every one of these schemas has a string in it
    assert all(r.startswith(JSON_STRING_CHAR) for r in char_rules)
    assert not any(r.startswith(LOOSE_STRING_CHAR) for r in rules)
