"""Anthropic's Messages API: the translators as plain functions (daemon/compat/anthropic.py),
and `/v1/messages` + `/v1/messages/count_tokens` in process against the fake engine."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.compat.anthropic import (
    MessageStream,
    anthropic_error,
    parse_count_request,
    parse_request,
)
from daemon.compat.errors import ErrorInfo
from daemon.engines.base import DoneEvent, StopReason
from daemon.errors import InvalidRequest
from daemon.prediction.types import (
    Message,
    PredictionDone,
    PredictionEvent,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    TextPart,
    ToolCall,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallStarted,
    ToolSetup,
)
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TEMPLATE_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": WEATHER["input_schema"],
    },
}
HELLO = [{"role": "user", "content": "hello there friend"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "echo", "max_tokens": 64, "messages": HELLO, **fields}


def done(
    reason: StopReason = StopReason.EOS,
    *,
    calls: tuple[ToolCall, ...] = (),
    text: str = "",
    reasoning: str = "",
    stop_string: str | None = None,
) -> PredictionDone:
    stats = DoneEvent(reason, 7, 3, 0.1, 0.2, 15.0, stop_string=stop_string)
    return PredictionDone(stats, text, reasoning, calls, ())


# -- request translator -------------------------------------------------------------------


def test_a_full_conversation_becomes_internal_messages() -> None:
    parsed = parse_request(
        {
            "model": "qwen",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me check."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "21 C"}],
                            "is_error": False,
                        },
                        {"type": "text", "text": "Thanks!"},
                    ],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "auto"},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 20,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": True,
        }
    )
    assert parsed.stream is True
    prediction = parsed.prediction
    assert prediction.model == "qwen"
    assert prediction.messages == (
        Message("system", (TextPart("Be brief.\n\nBe kind."),)),
        Message("user", (TextPart("Weather in Paris?"),)),
        Message(
            "assistant",
            (TextPart("Let me check."),),
            tool_calls=(ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),),
        ),
        Message("tool", (TextPart("Sunny"),), tool_call_id="toolu_1"),
        Message("tool", (TextPart("21 C"),), tool_call_id="toolu_2"),
        Message("user", (TextPart("Thanks!"),)),
    )
    assert prediction.tools == ToolSetup("auto", [TEMPLATE_WEATHER], ["get_weather"])
    params = prediction.params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (
        100,
        0.5,
        0.9,
        20,
    )
    assert params.stop == ["END"]


@pytest.mark.parametrize(
    ("choice", "mode", "names"),
    [
        ({"type": "auto"}, "auto", ["get_weather", "get_time"]),
        ({"type": "any"}, "required", ["get_weather", "get_time"]),
        ({"type": "tool", "name": "get_time"}, "required", ["get_time"]),
        ({"type": "none"}, "none", ["get_weather", "get_time"]),
        (None, "auto", ["get_weather", "get_time"]),
    ],
)
def test_tool_choice(choice: Any, mode: str, names: list[str]) -> None:
    tools = [WEATHER, {"name": "get_time", "input_schema": {"type": "object"}}]
    setup = parse_request(body(tools=tools, tool_choice=choice)).prediction.tools
    assert setup is not None
    assert (setup.mode, setup.names) == (mode, names)
    assert setup.tools[1] == {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object"}},
    }


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": None}, "max_tokens", "'max_tokens' is required"),
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"temperature": 1.5}, "temperature", "between 0 and 1"),
        ({"model": None}, "model", "'model' is required"),
        ({"messages": []}, "messages", "non-empty array"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages[0].role",
            "'user' or 'assistant'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": ""},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.data",
            "is empty",
        ),
        ({"stop_sequences": [""]}, "stop_sequences", "non-empty strings"),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "needs 'tools'"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice",
            "'nope'",
        ),
        ({"tools": [{"name": "f"}]}, "tools[0]", "input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "s"}]}, "tools[0]", "server tool"),
        ({"system": [{"type": "image"}]}, "system[0]", "only in user messages"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(body(**fields))
    assert caught.value.param == param
    assert words in str(caught.value)


def test_count_request_needs_no_max_tokens() -> None:
    prediction = parse_count_request({"model": "echo", "messages": HELLO, "system": "Hi."})
    assert prediction.messages[0] == Message("system", (TextPart("Hi."),))
    assert prediction.messages[1].text == "hello there friend"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (507, "api_error"),
    ],
)
def test_error_shape(status: int, kind: str) -> None:
    info = ErrorInfo(status, "server_error", "it broke", param="x", code="y")
    assert anthropic_error(info) == {
        "type": "error",
        "error": {"type": kind, "message": "it broke"},
    }


# -- response translator ------------------------------------------------------------------


def test_stream_translator_opens_and_closes_one_block_per_kind() -> None:
    stream = MessageStream("qwen", message_id="msg_1")
    call = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
    events = stream.start()
    timeline: list[PredictionEvent] = [
        PromptProgress(1.0),
        ReasoningFragment("Hmm."),
        TextFragment("Let me "),
        TextFragment(""),  # held back: says nothing
        TextFragment("check."),
        ToolCallStarted(0, call.id, call.name),
        ToolCallArguments(0, call.arguments),
        ToolCallEnded(0, call),
        done(calls=(call,), text="Let me check.", reasoning="Hmm."),
    ]
    for event in timeline:
        events += stream.event(event)
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "qwen",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Hmm."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Let me "},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "check."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_abc",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"input_tokens": 7, "output_tokens": 3},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert stream.message(done(calls=(call,)))["content"] == [
        {"type": "thinking", "thinking": "Hmm.", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Paris"}},
    ]


@pytest.mark.parametrize(
    ("reason", "stop_string", "expected"),
    [
        (StopReason.EOS, None, ("end_turn", None)),
        (StopReason.STOP_STRING, "END", ("stop_sequence", "END")),
        (StopReason.MAX_TOKENS, None, ("max_tokens", None)),
        (StopReason.CONTEXT_FULL, None, ("max_tokens", None)),
    ],
)
def test_stop_reasons(
    reason: StopReason, stop_string: str | None, expected: tuple[str, str | None]
) -> None:
    message = MessageStream("m").message(done(reason, stop_string=stop_string))
    assert (message["stop_reason"], message["stop_sequence"]) == expected
    assert message["usage"]["input_tokens"] == 7 and message["usage"]["output_tokens"] == 3


# -- routes, in process -------------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def post(client: Client, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(path, json=payload, headers={"anthropic-version": "2023-06-01"})
    return response.status, await response.json()


async def named_events(response: Any) -> list[tuple[str, Any]]:
    """Every `event:` + `data:` pair of an SSE response, the data parsed."""
    events: list[tuple[str, Any]] = []
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


async def test_a_message(client: Client) -> None:
    status, answer = await post(client, "/v1/messages", body())
    assert status == 200, answer
    assert answer["id"].startswith("msg_")
    assert {k: v for k, v in answer.items() if k not in ("id", "usage")} == {
        "type": "message",
        "role": "assistant",
        "model": "echo",
        "content": [{"type": "text", "text": "hello there friend"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    assert answer["usage"]["output_tokens"] == 3
    assert answer["usage"]["input_tokens"] > 0
    assert answer["usage"]["cache_read_input_tokens"] == 0


async def test_max_tokens_and_stop_sequences(client: Client) -> None:
    status, answer = await post(client, "/v1/messages", body(max_tokens=1))
    assert status == 200, answer
    assert answer["stop_reason"] == "max_tokens" and answer["usage"]["output_tokens"] == 1
    status, answer = await post(client, "/v1/messages", body(stop_sequences=["there"]))
    assert status == 200, answer
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "there")
    assert answer["content"] == [{"type": "text", "text": "hello "}]


async def test_a_streamed_message_is_the_exact_event_sequence(client: Client) -> None:
    response = await client.post("/v1/messages", json=body(stream=True))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await named_events(response)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == "echo"
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert deltas == [
        {"type": "text_delta", "text": "hello "},
        {"type": "text_delta", "text": "there "},
        {"type": "text_delta", "text": "friend"},
    ]
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 3


async def test_tool_use_and_a_second_turn_with_its_result(client: Client) -> None:
    first = body(model="toolsmith", tools=[WEATHER])
    status, answer = await post(client, "/v1/messages", first)
    assert status == 200, answer
    assert answer["stop_reason"] == "tool_use"
    [block] = answer["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("get_weather", {"city": "Paris"})
    second = body(
        model="echo",
        tools=[WEATHER],
        messages=[
            *HELLO,
            {"role": "assistant", "content": answer["content"]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block["id"], "content": "sunny"}
                ],
            },
        ],
    )
    status, answer = await post(client, "/v1/messages", second)
    assert status == 200, answer
    assert answer["stop_reason"] == "end_turn"
    # echo says the last user-side message: the tool's result reached the model.
    assert answer["content"][0]["type"] == "text"
    assert "sunny" in answer["content"][0]["text"]


async def test_streamed_tool_use(client: Client) -> None:
    payload = body(model="toolsmith", tools=[WEATHER], stream=True)
    events = await named_events(await client.post("/v1/messages", json=payload))
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [s["type"] for s in starts] == ["tool_use"]
    assert starts[0]["name"] == "get_weather" and starts[0]["input"] == {}
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_thinking_blocks(client: Client) -> None:
    status, answer = await post(client, "/v1/messages", body(model="thinker"))
    assert status == 200, answer
    assert answer["content"] == [
        {"type": "thinking", "thinking": "Two and two.", "signature": ""},
        {"type": "text", "text": "Four."},
    ]
    events = await named_events(
        await client.post("/v1/messages", json=body(model="thinker", stream=True))
    )
    starts = [
        (d["index"], d["content_block"]["type"]) for n, d in events if n == "content_block_start"
    ]
    assert starts == [(0, "thinking"), (1, "text")]
    thought = "".join(
        d["delta"].get("thinking", "") for n, d in events if n == "content_block_delta"
    )
    said = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert (thought, said) == ("Two and two.", "Four.")


async def test_count_tokens_counts_the_prompt_a_prediction_reads(client: Client) -> None:
    status, answer = await post(client, "/v1/messages", body(system="Be brief."))
    assert status == 200, answer
    status, counted = await post(
        client,
        "/v1/messages/count_tokens",
        {"model": "echo", "system": "Be brief.", "messages": HELLO},
    )
    assert status == 200, counted
    assert counted == {"input_tokens": answer["usage"]["input_tokens"]}
    for model in ("echo", "toolsmith"):  # tools in LM Studio's default format, or the template
        status, plain = await post(
            client, "/v1/messages/count_tokens", {"model": model, "messages": HELLO}
        )
        status, with_tools = await post(
            client,
            "/v1/messages/count_tokens",
            {"model": model, "messages": HELLO, "tools": [WEATHER]},
        )
        assert status == 200, with_tools
        assert with_tools["input_tokens"] > plain["input_tokens"] > 0


# -- errors in Anthropic's shape ----------------------------------------------------------


async def test_missing_max_tokens_is_an_invalid_request_error(client: Client) -> None:
    status, answer = await post(client, "/v1/messages", {"model": "echo", "messages": HELLO})
    assert status == 400
    assert answer == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"},
    }


async def test_an_unknown_model_is_not_found(client: Client) -> None:
    for path, payload in (
        ("/v1/messages", body(model="no-such-model")),
        ("/v1/messages/count_tokens", {"model": "no-such-model", "messages": HELLO}),
    ):
        status, answer = await post(client, path, payload)
        assert status == 404, answer
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "not_found_error"
        assert "no-such-model" in answer["error"]["message"]


async def test_bad_json_and_embedding_models_are_invalid_requests(client: Client) -> None:
    response = await client.post(
        "/v1/messages", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    status, answer = await post(client, "/v1/messages", body(model="text-embedding-embedder"))
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer


async def test_a_crash_mid_stream_is_an_error_event(client: Client) -> None:
    response = await client.post("/v1/messages", json=body(model="crashy", stream=True))
    assert response.status == 200
    events = await named_events(response)
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error"
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "SimulatedCrash" in data["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]
    status, answer = await post(client, "/v1/messages", body(model="crashy"))
    assert status == 502 and answer["error"]["type"] == "api_error"


async def test_keys_required_401_then_x_api_key_is_accepted(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    async with running_daemon(tmp_path, require_api_key=True) as daemon:
        client = await aiohttp_client(daemon.app)
        _, secret = daemon.keys.create("claude", "inference")
        response = await client.post("/v1/messages", json=body())
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "authentication_error"
        response = await client.post("/v1/messages", json=body(), headers={"x-api-key": "sk-wrong"})
        assert response.status == 401
        headers = {"x-api-key": secret, "anthropic-version": "2099-01-01"}
        response = await client.post("/v1/messages", json=body(), headers=headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["content"][0]["text"] == "hello there friend"
        response = await client.post(
            "/v1/messages/count_tokens", json={"model": "echo", "messages": HELLO}, headers=headers
        )
        assert response.status == 200
