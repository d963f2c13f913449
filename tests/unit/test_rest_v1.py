"""LM Studio's native REST API v1 (`GET /api/v1/models`, `POST /api/v1/chat`): the pure
translators, then the routes in process against the fake engine (tests/inprocess.py)."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.compat import lmstudio_v1 as v1
from daemon.compat.errors import ErrorInfo
from daemon.engines.base import DoneEvent, StopReason
from daemon.errors import InvalidRequest
from daemon.prediction.types import (
    Message,
    PredictionDone,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    TextPart,
)
from daemon.server import Daemon
from tests.inprocess import Client, admin_headers, running_daemon

DONE = DoneEvent(StopReason.EOS, 7, 5, 0.1234, 0.5, 10.0)


def done(text: str = "Four.", reasoning: str = "") -> PredictionDone:
    return PredictionDone(DONE, text, reasoning, (), ())


# -- translators ----------------------------------------------------------------------------


def test_parse_chat_string_input_and_sampling() -> None:
    parsed = v1.parse_chat(
        {
            "model": "echo",
            "input": "hi",
            "system_prompt": "Be brief.",
            "temperature": 0.2,
            "top_k": 5,
            "max_output_tokens": 9,
            "store": False,
            "stream": True,
            "context_length": 2048,
            "reasoning": "low",
        }
    )
    assert parsed.input == (Message("user", (TextPart("hi"),)),)
    assert parsed.params.temperature == 0.2 and parsed.params.top_k == 5
    assert parsed.params.max_tokens == 9
    assert (parsed.store, parsed.stream, parsed.context_length) == (False, True, 2048)
    prediction = parsed.prediction()
    assert [m.role for m in prediction.messages] == ["system", "user"]
    assert prediction.messages[0].text == "Be brief."
    assert prediction.separate_reasoning is True


def test_parse_chat_item_input() -> None:
    parsed = v1.parse_chat(
        {
            "model": "echo",
            "input": [{"type": "message", "content": "a"}, {"type": "text", "content": "b"}],
        }
    )
    assert parsed.input == (Message("user", (TextPart("a"), TextPart("b"))),)
    assert parsed.store is True and parsed.stream is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "echo"}, "input"),
        ({"model": "echo", "input": 3}, "input"),
        ({"model": "echo", "input": [{"type": "audio"}]}, "input"),
        (
            {"model": "echo", "input": [{"type": "image", "data_url": "data:,"}]},
            "input[0].data_url",
        ),
        ({"model": "echo", "input": "x", "temperature": 5}, "temperature"),
        ({"model": "echo", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "echo", "input": "x", "reasoning": "max"}, "reasoning"),
        ({"model": "echo", "input": "x", "store": "yes"}, "store"),
        ({"model": "echo", "input": "x", "context_length": 0}, "context_length"),
        ({"model": "echo", "input": "x", "integrations": ["mcp/x"]}, "integrations"),
    ],
)
def test_parse_chat_rejects(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        v1.parse_chat(body)
    assert caught.value.param == param


def test_conversation_replaces_the_stored_system_prompt() -> None:
    history = (
        Message("system", (TextPart("old"),)),
        Message("user", (TextPart("q"),)),
        Message("assistant", (TextPart("a"),)),
    )
    new = (Message("user", (TextPart("q2"),)),)
    assert v1.conversation(history, None, new) == history + new
    replaced = v1.conversation(history, "new", new)
    assert [(m.role, m.text) for m in replaced] == [
        ("system", "new"),
        ("user", "q"),
        ("assistant", "a"),
        ("user", "q2"),
    ]


def test_chat_result_shape() -> None:
    body = v1.chat_result(
        "thinker", done(reasoning="Hm."), reasoning_tokens=2, response_id="resp_1"
    )
    assert body == {
        "model_instance_id": "thinker",
        "output": [
            {"type": "reasoning", "content": "Hm."},
            {"type": "message", "content": "Four."},
        ],
        "stats": {
            "input_tokens": 7,
            "total_output_tokens": 5,
            "reasoning_output_tokens": 2,
            "tokens_per_second": 10.0,
            "time_to_first_token_seconds": 0.123,
        },
        "response_id": "resp_1",
    }
    loaded = v1.chat_result("echo", done(), load_seconds=1.23456)
    assert loaded["stats"]["model_load_time_seconds"] == 1.235
    assert "response_id" not in loaded
    assert loaded["output"] == [{"type": "message", "content": "Four."}]


def test_event_stream_order() -> None:
    stream = v1.EventStream("thinker")
    items = stream.start()
    for event in (
        PromptProgress(1.0),
        ReasoningFragment("Two "),
        ReasoningFragment("and two."),
        TextFragment("Four"),
        TextFragment("."),
    ):
        items += stream.event(event)
    items += stream.end({"ok": True})
    names = [name for name, _ in items]
    assert names == [
        "chat.start",
        "prompt_processing.start",
        "prompt_processing.progress",
        "prompt_processing.end",
        "reasoning.start",
        "reasoning.delta",
        "reasoning.delta",
        "reasoning.end",
        "message.start",
        "message.delta",
        "message.delta",
        "message.end",
        "chat.end",
    ]
    assert all(data["type"] == name for name, data in items)
    assert items[0][1]["model_instance_id"] == "thinker"
    assert items[-1][1]["result"] == {"ok": True}
    assert stream.reasoning_tokens == 2


def test_event_stream_error_closes_the_open_block() -> None:
    stream = v1.EventStream("crashy")
    items = stream.start(load_seconds=0.5) + stream.event(TextFragment("one"))
    error = v1.v1_error(ErrorInfo(502, "server_error", "it crashed", code="model_crashed"))
    items += stream.failed(error)
    assert [n for n, _ in items] == [
        "chat.start",
        "model_load.start",
        "model_load.end",
        "prompt_processing.start",
        "prompt_processing.end",
        "message.start",
        "message.delta",
        "message.end",
        "error",
    ]
    assert items[2][1]["load_time_seconds"] == 0.5
    assert items[-1][1]["error"] == {
        "type": "internal_error",
        "message": "it crashed",
        "code": "model_crashed",
    }


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        (ErrorInfo(400, "invalid_request_error", "bad", "model", "missing"), "invalid_request"),
        (ErrorInfo(404, "invalid_request_error", "no", code="model_not_found"), "model_not_found"),
        (ErrorInfo(400, "invalid_request_error", "no", code="not_implemented"), "not_implemented"),
        (ErrorInfo(500, "server_error", "boom"), "internal_error"),
    ],
)
def test_v1_error_types(info: ErrorInfo, kind: str) -> None:
    body = v1.v1_error(info)
    assert body["error"]["type"] == kind
    assert body["error"]["message"] == info.message
    assert ("param" in body["error"]) is (info.param is not None)


# -- routes, in process ---------------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def named_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every `event:` + `data:` pair of an SSE response."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = None
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert name is not None, line
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = None
    return events


async def test_models_before_and_after_a_load(client: Client, daemon: Daemon) -> None:
    response = await client.get("/api/v1/models")
    assert response.status == 200
    models = {m["key"]: m for m in (await response.json())["models"]}
    echo = models["echo"]
    assert echo["type"] == "llm" and echo["publisher"] == "test"
    assert echo["format"] == "gguf" and echo["architecture"] == "llama"
    assert echo["quantization"]["name"] == "Q4_K_M"
    assert echo["quantization"]["bits_per_weight"] == pytest.approx(4.85, abs=0.5)
    assert echo["size_bytes"] > 0 and echo["max_context_length"] == 4096
    assert echo["capabilities"] == {"vision": False, "trained_for_tool_use": False}
    assert echo["loaded_instances"] == []
    assert models["toolsmith"]["capabilities"]["trained_for_tool_use"] is True
    embedder = next(m for m in models.values() if m["type"] == "embedding")
    assert "capabilities" not in embedder

    load = await client.post(
        "/api/v1/models/load",
        json={"model": "echo", "context_length": 512, "parallel": 3},
        headers=admin_headers(daemon),
    )
    assert load.status == 200, await load.text()
    response = await client.get("/api/v1/models")
    models = {m["key"]: m for m in (await response.json())["models"]}
    assert models["echo"]["loaded_instances"] == [
        {"id": "echo", "config": {"context_length": 512, "parallel": 3}}
    ]
    assert models["thinker"]["loaded_instances"] == []


async def test_chat_plain(client: Client) -> None:
    response = await client.post(
        "/api/v1/chat", json={"model": "echo", "input": "hello there friend"}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["model_instance_id"] == "echo"
    assert body["output"] == [{"type": "message", "content": "hello there friend"}]
    stats = body["stats"]
    assert stats["total_output_tokens"] == 3 and stats["input_tokens"] > 0
    assert stats["reasoning_output_tokens"] == 0
    assert stats["model_load_time_seconds"] >= 0  # this request loaded it
    assert body["response_id"].startswith("resp_")
    again = await (await client.post("/api/v1/chat", json={"model": "echo", "input": "x"})).json()
    assert "model_load_time_seconds" not in again["stats"]


async def test_chat_max_output_tokens_and_no_store(client: Client) -> None:
    body = {"model": "echo", "input": "a b c d e", "max_output_tokens": 2, "store": False}
    answer = await (await client.post("/api/v1/chat", json=body)).json()
    assert answer["output"][0]["content"] == "a b "
    assert answer["stats"]["total_output_tokens"] == 2
    assert "response_id" not in answer


async def test_chat_streamed_event_order(client: Client) -> None:
    response = await client.post(
        "/api/v1/chat", json={"model": "echo", "input": "hello there friend", "stream": True}
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await named_events(response)
    progress = ("prompt_processing.progress", "model_load.progress")
    names = [n for n, _ in events if n not in progress]
    assert names == [
        "chat.start",
        "model_load.start",
        "model_load.end",
        "prompt_processing.start",
        "prompt_processing.end",
        "message.start",
        "message.delta",
        "message.delta",
        "message.delta",
        "message.end",
        "chat.end",
    ]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["model_instance_id"] == "echo"
    # The just-in-time load's progress comes between its start and its end, as it goes.
    loading = [n for n, _ in events][1 : [n for n, _ in events].index("model_load.end")]
    assert loading[0] == "model_load.start" and set(loading[1:]) == {"model_load.progress"}
    assert [d["progress"] for n, d in events if n == "model_load.progress"][-1] == 1.0
    text = "".join(d["content"] for n, d in events if n == "message.delta")
    assert text == "hello there friend"
    result = events[-1][1]["result"]
    assert result["output"] == [{"type": "message", "content": "hello there friend"}]
    assert result["response_id"].startswith("resp_")


async def test_chat_reasoning_with_the_thinker(client: Client) -> None:
    body = {"model": "thinker", "input": "2+2?", "reasoning": "on"}
    answer = await (await client.post("/api/v1/chat", json=body)).json()
    assert answer["output"] == [
        {"type": "reasoning", "content": "Two and two."},
        {"type": "message", "content": "Four."},
    ]
    stats = answer["stats"]
    assert 0 < stats["reasoning_output_tokens"] < stats["total_output_tokens"]
    events = await named_events(await client.post("/api/v1/chat", json={**body, "stream": True}))
    names = [n for n, _ in events]
    assert names.index("reasoning.start") < names.index("reasoning.end")
    assert names.index("reasoning.end") < names.index("message.start")
    assert "".join(d["content"] for n, d in events if n == "reasoning.delta") == "Two and two."
    assert "".join(d["content"] for n, d in events if n == "message.delta") == "Four."
    assert "model_load.start" not in names  # loaded by the first request


async def test_chat_previous_response_id(client: Client, daemon: Daemon) -> None:
    first = await (
        await client.post(
            "/api/v1/chat",
            json={"model": "echo", "input": "blue is nice", "system_prompt": "Be kind."},
        )
    ).json()
    second = await client.post(
        "/api/v1/chat",
        json={"model": "echo", "input": "what color", "previous_response_id": first["response_id"]},
    )
    assert second.status == 200, await second.text()
    body = await second.json()
    assert body["output"][0]["content"] == "what color"
    assert body["response_id"] != first["response_id"]
    stored = daemon.core.conversations.get(body["response_id"])
    assert [(m.role, m.text) for m in stored.messages] == [
        ("system", "Be kind."),
        ("user", "blue is nice"),
        ("assistant", "blue is nice"),
        ("user", "what color"),
        ("assistant", "what color"),
    ]


async def test_chat_context_length_applies_to_a_just_in_time_load(client: Client) -> None:
    body = {"model": "echo", "input": "hi", "context_length": 600}
    response = await client.post("/api/v1/chat", json=body)
    assert response.status == 200, await response.text()
    listing = await (await client.get("/api/v1/models")).json()
    echo = next(m for m in listing["models"] if m["key"] == "echo")
    assert echo["loaded_instances"][0]["config"]["context_length"] == 600


async def test_chat_errors_in_v1_shape(client: Client) -> None:
    response = await client.post("/api/v1/chat", json={"input": "hi"})
    assert response.status == 400
    assert await response.json() == {
        "error": {
            "type": "invalid_request",
            "message": "'model' is required",
            "code": "missing_required_parameter",
            "param": "model",
        }
    }
    response = await client.post("/api/v1/chat", json={"model": "no-such-model", "input": "hi"})
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["type"] == "model_not_found" and "no-such-model" in error["message"]
    response = await client.post(
        "/api/v1/chat",
        json={"model": "echo", "input": "hi", "previous_response_id": "resp_unknown"},
    )
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "invalid_request"
    response = await client.post(
        "/api/v1/chat", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request"
    response = await client.post(
        "/api/v1/chat", json={"model": "embedder", "input": "hi", "stream": True}
    )
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "model"


async def test_chat_crash_mid_stream_is_an_error_event(client: Client) -> None:
    response = await client.post(
        "/api/v1/chat", json={"model": "crashy", "input": "x", "stream": True}
    )
    assert response.status == 200
    events = await named_events(response)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "internal_error"
    assert "chat.end" not in [n for n, _ in events]
