"""The bounds on JSON schemas that become grammars (daemon/prediction/schema_limits.py),
and the engine's bound on the grammar itself (daemon/engines/llama_sampling.py)."""

import json
from typing import Any

import pytest

from daemon.errors import InvalidRequest
from daemon.prediction import schema_limits
from daemon.prediction.schema_limits import (
    MAX_BRANCHES,
    MAX_DEPTH,
    MAX_ENUM,
    MAX_PROPERTIES,
    MAX_REPEAT,
    MAX_SCHEMA_BYTES,
    check_schema,
    check_structured,
)
from daemon.prediction.tools import call_constraint
from daemon.prediction.types import ToolSetup

HUGE = 1_000_000_000

# Schemas real clients send (tests/integration/test_openai_client.py and friends).
NORMAL: list[dict[str, Any]] = [
    {"type": "object"},
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "explanation": {"type": "string", "maxLength": 500},
                        "output": {"type": "string"},
                    },
                    "required": ["explanation", "output"],
                },
                "minItems": 1,
                "maxItems": 10,
            },
            "final_answer": {"type": "string", "pattern": "^[0-9]{1,4}$"},
            "kind": {"enum": ["a", "b", "c"]},
            "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "$defs": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    },
    {  # repetition counts exactly at the limit
        "type": "array",
        "items": {"type": "string", "minLength": MAX_REPEAT, "maxLength": MAX_REPEAT},
        "maxItems": MAX_REPEAT,
    },
    # a data value (const, enum, default, examples) is not a schema: its keys are not limits
    {"type": "object", "const": {"minItems": HUGE}, "default": {"maxLength": HUGE}},
    {  # and a property may be named like a keyword
        "type": "object",
        "properties": {"minItems": {"type": "integer"}, "enum": {"type": "string"}},
    },
]


@pytest.mark.parametrize("schema", NORMAL)
def test_normal_schemas_pass(schema: dict[str, Any]) -> None:
    check_schema(schema, param="response_format")


def test_nothing_to_check_passes() -> None:
    check_structured(None, param="response_format")


def refused(schema: Any, param: str = "response_format") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, param=param)
    assert caught.value.code == "schema_too_large" and caught.value.param == param
    return caught.value


@pytest.mark.parametrize("keyword", schema_limits.REPEAT_KEYWORDS)
def test_each_repetition_count_is_bounded(keyword: str) -> None:
    error = refused({"type": "array", keyword: HUGE})
    assert f"'{keyword}' is {HUGE}, above the limit of {MAX_REPEAT}" in str(error)
    refused({"type": "string", keyword: MAX_REPEAT + 1})
    refused({"type": "string", keyword: 1e300})  # a float counts too


def test_the_message_says_where_the_count_is() -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "minItems": HUGE}}}
    assert "'minItems' at '/properties/tags' is" in str(refused(schema))


def test_a_count_nested_anywhere_is_found() -> None:
    inner = {"type": "string", "minLength": HUGE}
    for schema in (
        {"type": "array", "items": inner},
        {"anyOf": [{"type": "null"}, inner]},
        {"$defs": {"s": inner}, "$ref": "#/$defs/s"},
        {"type": "array", "prefixItems": [inner]},
        {"type": "object", "additionalProperties": inner},
        {"type": "object", "properties": {"default": inner}},  # a property named like data
        {"type": "object", "properties": {"enum": {"type": "array", "items": inner}}},
        {"definitions": {"const": inner}},
    ):
        refused(schema)


@pytest.mark.parametrize(
    "pattern", ["^a{1001}$", "^[ab]{0,1000000000}$", "^(ab){2000,}$", "x{99999999999999999999}"]
)
def test_repetitions_in_a_pattern_are_bounded(pattern: str) -> None:
    error = refused({"type": "string", "pattern": pattern})
    assert "in 'pattern' is above the limit of 1000" in str(error)


def test_an_escaped_brace_in_a_pattern_is_text() -> None:
    check_schema({"type": "string", "pattern": r"^\{5000}$"}, param="response_format")


def test_nesting_depth_is_bounded() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_DEPTH):
        schema = {"type": "array", "items": schema}
    assert f"nested deeper than the limit of {MAX_DEPTH}" in str(refused(schema))


def test_very_deep_nesting_is_refused_without_recursion() -> None:
    schema: Any = {}
    for _ in range(100_000):  # json.dumps or a recursive walk would overflow the stack
        schema = {"items": schema}
    refused(schema)


def test_number_of_properties_is_bounded() -> None:
    props = {f"p{i}": {"type": "integer"} for i in range(MAX_PROPERTIES + 1)}
    error = refused({"type": "object", "properties": props})
    assert f"has {MAX_PROPERTIES + 1} entries, above the limit of {MAX_PROPERTIES}" in str(error)


def test_number_of_enum_values_is_bounded() -> None:
    error = refused({"enum": list(range(MAX_ENUM + 1))})
    assert f"above the limit of {MAX_ENUM}" in str(error)


@pytest.mark.parametrize("keyword", ["anyOf", "oneOf", "allOf", "prefixItems"])
def test_number_of_branches_is_bounded(keyword: str) -> None:
    error = refused({keyword: [{"type": "string"}] * (MAX_BRANCHES + 1)})
    assert f"'{keyword}' has {MAX_BRANCHES + 1} entries" in str(error)


def test_total_size_is_bounded() -> None:
    schema = {"type": "string", "description": "x" * MAX_SCHEMA_BYTES}
    assert f"above the limit of {MAX_SCHEMA_BYTES} bytes" in str(refused(schema))


def test_a_forced_tool_call_is_checked_through_its_parameters() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "array", "minItems": HUGE}},
    }
    constraint = call_constraint(ToolSetup("required", [tool], ["f"]))
    with pytest.raises(InvalidRequest) as caught:
        check_structured(constraint, param="tools")
    assert caught.value.param == "tools" and "'minItems'" in str(caught.value)


def test_the_engine_bounds_the_grammar_it_generates() -> None:
    pytest.importorskip("llama_cpp")
    from daemon.engines.llama_sampling import (
        MAX_GRAMMAR_BYTES,
        check_grammar_size,
        structured_grammar,
    )

    # Within every schema limit, yet a grammar over the engine's bound: 200 strings of up
    # to 1000 characters (about 8 kB of grammar each).
    props = {f"p{i}": {"type": "string", "maxLength": MAX_REPEAT} for i in range(200)}
    schema = {"type": "object", "properties": props}
    check_schema(schema, param="response_format")
    grammar = structured_grammar({"schema": schema})
    assert len(grammar) > MAX_GRAMMAR_BYTES
    with pytest.raises(InvalidRequest) as caught:
        check_grammar_size(grammar)
    assert caught.value.code == "schema_too_large"
    assert f"above the limit of {MAX_GRAMMAR_BYTES} bytes" in str(caught.value)
    check_grammar_size(structured_grammar({"schema": json.loads(json.dumps(NORMAL[2]))}))
