"""A schema that would expand into a huge grammar is a 400 naming the limit on every
surface, before it reaches the engine: in process, against the fake engine (which would
otherwise answer it). See daemon/prediction/schema_limits.py."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

CHAT = [{"role": "user", "content": "hello there friend"}]
HUGE_ARRAY = {"type": "array", "minItems": 1_000_000_000}
HUGE_STRING = {"type": "string", "maxLength": 1_000_000_000}
HUGE_OBJECT = {"type": "object", "minProperties": 1_000_000_000}
LIMIT = "above the limit of 1000"


def huge_tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def post(
    client: Client, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    response = await client.post(path, json=body, headers=headers)
    return response.status, await response.json()


def assert_refused(status: int, answer: Any, param: str) -> None:
    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == "schema_too_large" and error["param"] == param, error
    assert LIMIT in error["message"]


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


@pytest.mark.parametrize("schema", [HUGE_ARRAY, HUGE_STRING, HUGE_OBJECT])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_chat_response_format(
    client: Client, schema: dict[str, Any], stream: bool, prefix: str
) -> None:
    body = {"model": "echo", "messages": CHAT, "stream": stream}
    status, answer = await post(
        client, f"{prefix}/chat/completions", {**body, "response_format": json_schema(schema)}
    )
    assert_refused(status, answer, "response_format")
    assert "'" + next(k for k in schema if k != "type") + "'" in answer["error"]["message"]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
@pytest.mark.parametrize("model", ["toolsmith", "fallback-tools"])
async def test_chat_forced_tool_call(client: Client, choice: Any, model: str) -> None:
    body = {"model": model, "messages": CHAT, "tools": [huge_tool(HUGE_ARRAY)]}
    assert_refused(
        *await post(client, "/v1/chat/completions", {**body, "tool_choice": choice}), "tools"
    )


async def test_a_tool_that_is_not_forced_makes_no_grammar(client: Client) -> None:
    body = {"model": "echo", "messages": CHAT, "tools": [huge_tool(HUGE_ARRAY)]}
    status, answer = await post(client, "/v1/chat/completions", {**body, "tool_choice": "auto"})
    assert status == 200, answer


async def test_a_normal_schema_still_works(client: Client) -> None:
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
    }
    body = {"model": "echo", "messages": CHAT, "response_format": json_schema(schema)}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 200, answer


async def test_responses_text_format(client: Client) -> None:
    fmt = {"type": "json_schema", "name": "out", "schema": HUGE_ARRAY}
    body = {"model": "echo", "input": "hi", "text": {"format": fmt}}
    assert_refused(*await post(client, "/v1/responses", body), "response_format")


async def test_responses_required_tool(client: Client) -> None:
    tool = {"type": "function", "name": "f", "parameters": HUGE_STRING}
    body = {"model": "echo", "input": "hi", "tools": [tool], "tool_choice": "required"}
    assert_refused(*await post(client, "/v1/responses", body), "tools")


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "f"}])
async def test_messages_forced_tool(client: Client, choice: dict[str, Any]) -> None:
    tool = {"name": "f", "input_schema": {"type": "object", "maxProperties": 10**9}}
    body = {
        "model": "echo",
        "max_tokens": 64,
        "messages": CHAT,
        "tools": [tool],
        "tool_choice": choice,
    }
    status, answer = await post(
        client, "/v1/messages", body, headers={"anthropic-version": "2023-06-01"}
    )
    assert status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert "'maxProperties'" in answer["error"]["message"]
    assert LIMIT in answer["error"]["message"]
