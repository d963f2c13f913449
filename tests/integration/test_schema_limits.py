"""The memory-exhaustion attack through structured output, against the real daemon and
the real llama.cpp worker (SmolLM2): a schema with a huge repeat count is a 400 before
the worker builds anything, the worker stays small, and it runs under its memory ceiling
(RLIMIT_DATA) with its weights loaded fine."""

from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import RunningDaemon
from tests.support import post_json

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Give me some JSON."}]
MIB = 1024 * 1024


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def chat(daemon: RunningDaemon, **fields: Any) -> tuple[int, Any]:
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 24, "temperature": 0, **fields}
    return post_json(f"{daemon.url}/v1/chat/completions", body, timeout=120)


def worker(daemon: RunningDaemon) -> psutil.Process:
    (instance,) = [i for i in daemon.lms.json("ps") if i["identifier"] == MODEL]
    return psutil.Process(instance["pid"])


def data_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            return line.split()[3]
    raise AssertionError("no 'Max data size' line")


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": json_schema({"type": "array", "minItems": 1_000_000_000})},
        {"response_format": json_schema({"type": "string", "minLength": 1_000_000_000})},
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"x": {"type": "array", "maxItems": 10**9}},
                        },
                    },
                }
            ],
            "tool_choice": "required",
        },
    ],
)
def test_the_attack_is_a_400_and_the_worker_stays_small(
    daemon: RunningDaemon, fields: dict[str, Any]
) -> None:
    status, body = chat(daemon, **fields)
    assert status == 400, body
    assert body["error"]["code"] == "schema_too_large"
    assert "above the limit of 1000" in body["error"]["message"]
    # The model was loaded just in time for the request; its worker never built the
    # grammar: it holds the weights (about 100 MB) and little else.
    assert worker(daemon).memory_info().rss < 600 * MIB


def test_the_engine_refuses_a_grammar_over_its_bound(daemon: RunningDaemon) -> None:
    # Every count is within the schema limits, but the grammar would be about 1.6 MB.
    properties = {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(200)}
    schema = {"type": "object", "properties": properties}
    status, body = chat(daemon, response_format=json_schema(schema))
    assert status == 400, body
    assert body["error"]["code"] == "schema_too_large"
    assert "its grammar is" in body["error"]["message"]
    assert "above the limit of 1048576 bytes" in body["error"]["message"]
    status, body = chat(daemon)  # the worker goes on serving
    assert status == 200, body


def test_the_worker_has_a_memory_ceiling_and_serves_under_it(daemon: RunningDaemon) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 30}},
        "required": ["name"],
    }
    status, body = chat(daemon, response_format=json_schema(schema))
    assert status == 200, body
    proc = worker(daemon)
    limit = data_limit(proc.pid)
    assert limit != "unlimited", "the guardrail is on: the worker has a ceiling"
    # The estimate (weights + KV cache + overhead) plus at least 1 GiB of margin.
    assert 1024 * MIB < int(limit) < 4096 * MIB
