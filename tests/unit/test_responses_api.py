"""OpenAI's Responses API: the translators as plain functions (daemon/compat/
openai_responses.py), and `/v1/responses` in process against the fake engine (see
tests/inprocess.py)."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.compat.errors import ErrorInfo
from daemon.compat.openai_responses import (
    ResponseStream,
    output_text,
    parse_response_request,
)
from daemon.engines.base import DoneEvent, StopReason
from daemon.errors import InvalidRequest
from daemon.http.keys import CONVERSATIONS
from daemon.prediction.types import (
    Message,
    PredictionDone,
    ReasoningFragment,
    TextFragment,
    TextPart,
    ToolCall,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallStarted,
)
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}


def done(text: str = "", *, reason: StopReason = StopReason.EOS, calls: int = 0) -> PredictionDone:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    return PredictionDone(
        stats=DoneEvent(reason, 7, 3, 0.1, 0.2, 15.0),
        text=text,
        reasoning="",
        tool_calls=(call,) * calls,
        tokens=(),
    )


# -- the request translator -----------------------------------------------------------------


def test_a_string_input_is_one_user_message_and_instructions_go_first() -> None:
    parsed = parse_response_request(
        {
            "model": "echo",
            "input": "hi",
            "instructions": "Be brief.",
            "max_output_tokens": 16,
            "temperature": 0.2,
            "top_p": 0.5,
            "seed": 3,
            "reasoning": {"effort": "low"},
            "metadata": {"k": "v"},
            "user": "u1",
            "parallel_tool_calls": False,
            "truncation": "auto",
        }
    )
    history = (Message("user", (TextPart("before"),)),)
    prediction = parsed.prediction(history)
    assert [(m.role, m.text) for m in prediction.messages] == [
        ("system", "Be brief."),
        ("user", "before"),
        ("user", "hi"),
    ]
    assert parsed.input == (Message("user", (TextPart("hi"),)),)
    params = prediction.params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (16, 0.2, 0.5, 3)
    assert parsed.store and not parsed.stream and parsed.previous_response_id is None
    assert parsed.echo["metadata"] == {"k": "v"} and parsed.echo["parallel_tool_calls"] is False


def test_input_items_become_messages_calls_and_tool_results() -> None:
    parsed = parse_response_request(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me see.", "annotations": []}],
                },
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
            ],
        }
    )
    messages = parsed.input
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assistant = messages[2]
    assert assistant.text == "Let me see."
    assert [c.id for c in assistant.tool_calls] == ["c1", "c2"]
    assert assistant.tool_calls[0] == ToolCall("c1", "get_weather", "{}")
    assert (messages[3].tool_call_id, messages[3].name, messages[3].text) == (
        "c1",
        "get_weather",
        "Sunny",
    )
    assert (messages[4].tool_call_id, messages[4].text) == ("c2", "noon")


def test_flat_function_tools_become_the_template_shape() -> None:
    parsed = parse_response_request(
        {"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": "required"}
    )
    tools = parsed.base.tools
    assert tools is not None and tools.mode == "required" and tools.names == ["get_weather"]
    assert tools.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    named = parse_response_request(
        {
            "model": "m",
            "input": "x",
            "tools": [WEATHER, {**WEATHER, "name": "other"}],
            "tool_choice": {"type": "function", "name": "other"},
        }
    ).base.tools
    assert named is not None and named.mode == "required" and named.names == ["other"]
    assert parse_response_request({"model": "m", "input": "x", "tools": [WEATHER]}).base.tools
    none = parse_response_request(
        {"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": "none"}
    ).base.tools
    assert none is not None and none.mode == "none"


def test_text_format_becomes_structured_output() -> None:
    fmt = {"type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}
    parsed = parse_response_request({"model": "m", "input": "x", "text": {"format": fmt}})
    assert parsed.base.structured == {"schema": SCHEMA}
    assert parsed.prediction().structured == {"schema": SCHEMA}
    assert parsed.echo["text"] == {"format": fmt}
    as_object = parse_response_request(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    )
    assert as_object.base.structured == {"schema": {"type": "object"}}
    plain = parse_response_request(
        {"model": "m", "input": "x", "text": {"format": {"type": "text"}}}
    )
    assert plain.base.structured is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "name": "nope"},
            },
            "tool_choice",
        ),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "x", "store": "yes"}, "store"),
        ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "truncation": "middle"}, "truncation"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_response_request(body)
    assert caught.value.param == param


# -- the response translator ----------------------------------------------------------------


def stream_for(body: dict[str, Any] | None = None) -> ResponseStream:
    parsed = parse_response_request(body or {"model": "m", "input": "hi"})
    return ResponseStream("resp_1", "m", parsed, created_at=100)


def test_text_events_and_the_response_object() -> None:
    builder = stream_for()
    events = builder.start()
    for event in (TextFragment("Hel"), TextFragment(""), TextFragment("lo"), done("Hello")):
        events += builder.event(event)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [payload["sequence_number"] for _, payload in events] == list(range(len(events)))
    assert all(payload["type"] == name for name, payload in events)
    assert events[0][1]["response"]["status"] == "in_progress"
    delta = events[4][1]
    message_id = events[2][1]["item"]["id"]
    assert delta == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": message_id,
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
    }
    body = builder.response()
    assert events[-1][1]["response"] == body
    assert body["status"] == "completed" and body["object"] == "response"
    assert body["id"] == "resp_1" and body["created_at"] == 100 and body["error"] is None
    assert body["output"] == [
        {
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert message_id.startswith("msg_")
    assert body["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }
    assert output_text(body) == "Hello"


def test_reasoning_then_text_then_a_call() -> None:
    builder = stream_for()
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    events: list[tuple[str, dict[str, Any]]] = []
    for event in (
        ReasoningFragment("Think."),
        TextFragment("Checking."),
        ToolCallStarted(0, "call_1", "get_weather"),
        ToolCallArguments(0, '{"city": "Paris"}'),
        ToolCallEnded(0, call),
        done("Checking.", calls=1),
    ):
        events += builder.event(event)
    assert [name for name, _ in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    output = builder.response()["output"]
    assert [item["type"] for item in output] == ["reasoning", "message", "function_call"]
    assert output[0]["content"] == [{"type": "reasoning_text", "text": "Think."}]
    assert output[0]["summary"] == [] and output[0]["id"].startswith("rs_")
    fc = output[2]
    assert fc["id"].startswith("fc_")
    assert {k: fc[k] for k in ("call_id", "name", "arguments", "status")} == {
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    }
    assert [item["output_index"] for name, item in events if name.endswith("item.added")] == [
        0,
        1,
        2,
    ]


def test_cut_by_length_is_incomplete_and_nothing_said_is_an_empty_message() -> None:
    builder = stream_for()
    events = builder.event(TextFragment("Hel")) + builder.event(
        done("Hel", reason=StopReason.MAX_TOKENS)
    )
    assert events[-1][0] == "response.incomplete"
    body = builder.response()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    empty = stream_for()
    names = [name for name, _ in empty.event(done(""))]
    assert names == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert output_text(empty.response()) == "" and len(empty.response()["output"]) == 1


def test_a_failure_after_the_start_is_an_error_and_a_failed_response() -> None:
    builder = stream_for()
    builder.start()
    builder.event(TextFragment("one "))
    events = builder.fail(ErrorInfo(502, "server_error", "the model crashed", code="model_crashed"))
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    assert events[-2][1]["code"] == "model_crashed"
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "the model crashed"}


# -- the routes, in process -----------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def post(client: Client, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/v1/responses", json=body)
    return response.status, await response.json()


async def named_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) for each SSE event of a response."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


async def test_a_plain_response(client: Client) -> None:
    status, body = await post(
        client, {"model": "echo", "input": "hello there friend", "instructions": "Echo."}
    )
    assert status == 200, body
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed" and body["model"] == "echo"
    assert output_text(body) == "hello there friend"
    assert body["usage"]["output_tokens"] == 3
    assert body["instructions"] == "Echo." and body["store"] is True
    assert body["tools"] == [] and body["tool_choice"] == "auto"


async def test_a_streamed_response_in_order(client: Client) -> None:
    response = await client.post(
        "/v1/responses", json={"model": "echo", "input": "hello there friend", "stream": True}
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await named_events(response)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [p["sequence_number"] for _, p in events] == list(range(11))
    assert "".join(p["delta"] for n, p in events if n.endswith("text.delta")) == (
        "hello there friend"
    )
    final = events[-1][1]["response"]
    assert output_text(final) == "hello there friend"
    assert {p["response"]["id"] for n, p in events if "response" in p} == {final["id"]}
    stored = await client.get(f"/v1/responses/{final['id']}")
    assert stored.status == 200 and await stored.json() == final


async def test_max_output_tokens_makes_an_incomplete_response(client: Client) -> None:
    status, body = await post(
        client, {"model": "echo", "input": "hello there friend", "max_output_tokens": 1}
    )
    assert status == 200, body
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 1 and body["max_output_tokens"] == 1


async def test_a_tool_call_then_the_result_in_a_second_turn(client: Client, daemon: Daemon) -> None:
    status, first = await post(
        client,
        {"model": "toolsmith", "input": "Weather in Paris?", "tools": [WEATHER]},
    )
    assert status == 200, first
    (call,) = first["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["status"] == "completed" and call["call_id"]
    second_input = [
        {"role": "user", "content": "Weather in Paris?"},
        {k: call[k] for k in ("type", "call_id", "name", "arguments")},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny"},
        {"role": "user", "content": "so what is it"},
    ]
    status, second = await post(
        client, {"model": "echo", "input": second_input, "tools": [WEATHER]}
    )
    assert status == 200, second
    assert output_text(second) == "so what is it"
    messages = daemon.app[CONVERSATIONS].get(second["id"]).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "user", "assistant"]
    assert messages[1].tool_calls[0].id == call["call_id"]
    assert (messages[2].tool_call_id, messages[2].name, messages[2].text) == (
        call["call_id"],
        "get_weather",
        "Sunny",
    )


async def test_a_streamed_tool_call(client: Client) -> None:
    response = await client.post(
        "/v1/responses",
        json={"model": "toolsmith", "input": "Weather?", "tools": [WEATHER], "stream": True},
    )
    events = await named_events(response)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2][1]["item"]["status"] == "in_progress"
    assert json.loads(events[4][1]["arguments"]) == {"city": "Paris"}
    assert events[5][1]["item"]["status"] == "completed"


async def test_a_thinking_model_answers_with_a_reasoning_item(client: Client) -> None:
    status, body = await post(client, {"model": "thinker", "input": "2+2?"})
    assert status == 200, body
    reasoning, message = body["output"]
    assert message["type"] == "message"
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Two and two."}]
    assert output_text(body).strip() == "Four."


async def test_previous_response_id_chains_and_get_delete(client: Client, daemon: Daemon) -> None:
    status, first = await post(
        client, {"model": "echo", "input": "hello there", "instructions": "Only once."}
    )
    assert status == 200, first
    status, second = await post(
        client, {"model": "echo", "input": "and again", "previous_response_id": first["id"]}
    )
    assert status == 200, second
    assert second["previous_response_id"] == first["id"]
    messages = daemon.app[CONVERSATIONS].get(second["id"]).messages
    assert [(m.role, m.text) for m in messages] == [
        ("user", "hello there"),
        ("assistant", "hello there"),
        ("user", "and again"),
        ("assistant", "and again"),
    ]
    got = await client.get(f"/v1/responses/{first['id']}")
    assert got.status == 200 and await got.json() == first
    deleted = await client.delete(f"/v1/responses/{first['id']}")
    assert deleted.status == 200
    assert await deleted.json() == {"id": first["id"], "object": "response", "deleted": True}
    gone = await client.get(f"/v1/responses/{first['id']}")
    assert gone.status == 404
    assert (await gone.json())["error"]["code"] == "not_found"
    again = await client.delete(f"/v1/responses/{first['id']}")
    assert again.status == 404
    status, answer = await post(
        client, {"model": "echo", "input": "x", "previous_response_id": first["id"]}
    )
    assert status == 404 and answer["error"]["code"] == "not_found"


async def test_store_false_is_never_stored(client: Client) -> None:
    status, body = await post(client, {"model": "echo", "input": "hi", "store": False})
    assert status == 200 and body["store"] is False
    got = await client.get(f"/v1/responses/{body['id']}")
    assert got.status == 404


async def test_structured_output_reaches_the_prediction(client: Client) -> None:
    # The fake engine ignores the constraint; the translator test checks the schema.
    fmt = {"type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}
    status, body = await post(client, {"model": "echo", "input": "hi", "text": {"format": fmt}})
    assert status == 200, body
    assert body["text"] == {"format": fmt}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "echo"}, 400, "input"),
        ({"input": "hi"}, 400, "model"),
        ({"model": "no-such-model", "input": "hi"}, 404, None),
        ({"model": "echo", "input": "hi", "previous_response_id": "resp_nope"}, 404, None),
        ({"model": "echo", "input": "hi", "tools": [{"type": "file_search"}]}, 400, "tools"),
    ],
)
async def test_errors_in_openai_shape(
    client: Client, body: dict[str, Any], status: int, param: str | None
) -> None:
    got, answer = await post(client, body)
    assert got == status, answer
    assert set(answer["error"]) >= {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_context_is_a_plain_400(client: Client, stream: bool) -> None:
    long = " ".join(["word"] * 40)
    status, answer = await post(client, {"model": "tiny", "input": long, "stream": stream})
    assert status == 400
    assert answer["error"]["code"] == "context_length_exceeded"


async def test_a_crash_mid_stream_is_a_failed_response(client: Client) -> None:
    response = await client.post(
        "/v1/responses", json={"model": "crashy", "input": "hi", "stream": True}
    )
    assert response.status == 200
    events = await named_events(response)
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-2:] == ["error", "response.failed"]
    assert "response.completed" not in names
    assert events[-2][1]["code"] == "model_crashed"
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    got = await client.get(f"/v1/responses/{failed['id']}")
    assert got.status == 404, "a failed response is not stored"
