"""Limits on the JSON schemas that become grammars (structured output, forced tool calls).

A JSON schema is expanded into a grammar inside the worker (llama.cpp's JSON-schema to
GBNF converter, llguidance for MLX), and the expansion is as large as the schema's
repetition counts say: `{"type": "string", "minLength": 1000000000}` is a grammar of
gigabytes, built in one call that cannot be cancelled. Every schema is checked here,
in the daemon, before the request reaches the engine; a schema over a limit is a 400
(`schema_too_large`) that names the limit. Pure: no I/O.

The limits are far above what real schemas use. llama.cpp itself refuses a repetition
of more than about 2000 (its "sane defaults"), so a count above `MAX_REPEAT` never
worked anyway; the engine also bounds the size of the grammar it generates
(daemon/engines/llama_sampling.py), for whatever these limits let through.
"""

from __future__ import annotations

import json
import re
from typing import Any

from daemon.errors import InvalidRequest

MAX_REPEAT = 1000  # minItems, maxLength, ... and {n,m} in a pattern
MAX_DEPTH = 64  # nesting of the schema document (objects and arrays)
MAX_PROPERTIES = 1000  # properties of one object schema
MAX_ENUM = 1000  # values of one enum
MAX_BRANCHES = 256  # anyOf/oneOf/allOf alternatives, prefixItems entries
MAX_SCHEMA_BYTES = 256 * 1024  # the whole schema, as compact JSON

CODE = "schema_too_large"

REPEAT_KEYWORDS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
BRANCH_KEYWORDS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas
# schemas by name: their keys are names ("properties": {"default": {...}} is a property)
NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_QUANTIFIER = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def check_structured(structured: dict[str, Any] | None, *, param: str) -> None:
    """Checks a structured-output constraint ({"schema": ...}); None passes."""
    if structured is not None:
        check_schema(structured.get("schema"), param=param)


def check_schema(schema: Any, *, param: str) -> None:
    """Raises InvalidRequest (400, code `schema_too_large`, the given param) when the
    schema goes over one of the limits above; the message names the limit and where."""
    _check_depth(schema, param)  # first: what follows may recurse (json.dumps)
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise _too_large(
            param, f"the schema is {size} bytes, above the limit of {MAX_SCHEMA_BYTES} bytes"
        )
    stack: list[tuple[Any, str, bool]] = [(schema, "", False)]  # (node, where, a name map)
    while stack:
        node, where, names = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{where}/{i}", False) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if not names:
            _check_node(node, where, param)
        for key, value in node.items():
            if isinstance(value, dict | list) and (names or key not in DATA_KEYWORDS):
                stack.append((value, f"{where}/{key}", not names and key in NAME_MAPS))


def _check_depth(schema: Any, param: str) -> None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise _too_large(param, f"the schema is nested deeper than the limit of {MAX_DEPTH}")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _check_node(node: dict[str, Any], where: str, param: str) -> None:
    at = f" at '{where}'" if where else ""
    for key in REPEAT_KEYWORDS:
        value = node.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_REPEAT:
            raise _too_large(param, f"'{key}'{at} is {value}, above the limit of {MAX_REPEAT}")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        for match in _QUANTIFIER.finditer(pattern):
            count = max(_count(n) for n in match.groups() if n)
            if count > MAX_REPEAT:
                raise _too_large(
                    param,
                    f"the repetition {match.group(0)} in 'pattern'{at} is above the limit "
                    f"of {MAX_REPEAT}",
                )
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        raise _too_large(
            param,
            f"'properties'{at} has {len(properties)} entries, above the limit of {MAX_PROPERTIES}",
        )
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM:
        raise _too_large(param, f"'enum'{at} has {len(enum)} values, above the limit of {MAX_ENUM}")
    for key in BRANCH_KEYWORDS:
        branches = node.get(key)
        if isinstance(branches, list) and len(branches) > MAX_BRANCHES:
            raise _too_large(
                param,
                f"'{key}'{at} has {len(branches)} entries, above the limit of {MAX_BRANCHES}",
            )


def _count(digits: str) -> float:
    return int(digits) if len(digits) <= 18 else float("inf")  # int() refuses huge strings


def _too_large(param: str, detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"the JSON schema is too large for structured output: {detail}", param=param, code=CODE
    )
