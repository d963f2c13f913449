"""The pure translators between wire shapes and internal types."""

import math

import pytest

from daemon.compat import requests as parse
from daemon.compat import responses as render
from daemon.compat.durations import parse_seconds, request_ttl
from daemon.compat.tools import parse_tools, to_openai_call
from daemon.engines.base import DoneEvent, StopReason, TokenEvent
from daemon.errors import InvalidRequest
from daemon.prediction.tools import (
    REQUEST_END,
    REQUEST_START,
    FailedCall,
    Piece,
    ToolCallParser,
    call_constraint,
    fallback_messages,
)
from daemon.prediction.types import Message, PredictionDone, TextPart, ToolCall

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("-1", math.inf),
        (-1, math.inf),
        (0, 0.0),
        ("12", 12.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_seconds(value, param="keep_alive") == seconds


def test_ttl_wins_over_keep_alive_and_bad_values_name_the_field() -> None:
    assert request_ttl({"ttl": 10, "keep_alive": "5m"}) == 10
    assert request_ttl({"keep_alive": "5m"}) == 300
    assert request_ttl({}) is None
    with pytest.raises(InvalidRequest) as info:
        request_ttl({"keep_alive": "soonish"})
    assert info.value.param == "keep_alive"


def test_params_defaults_and_lm_studio_minus_one() -> None:
    params = parse.parse_params(
        {"max_tokens": -1, "stop": "\n", "seed": 7, "logit_bias": {"2": -100}}
    )
    assert params.max_tokens is None and params.stop == ["\n"] and params.seed == 7
    assert params.logit_bias == {2: -100.0}
    legacy = parse.parse_params({"logprobs": 3})  # /v1/completions: top-n as an int
    assert legacy.logprobs and legacy.top_logprobs == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"stop": [1]}, "stop"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream_options": {"include_usage": 1}}, "stream_options"),
    ],
)
def test_bad_params_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})
    assert info.value.param == param


def test_messages_accept_content_parts_and_map_developer_to_system() -> None:
    messages = parse.parse_messages(
        [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    assert messages == (
        Message("system", (TextPart("be brief"),)),
        Message("user", (TextPart("a"), TextPart("b"))),
    )
    assert messages[1].text == "ab"
    with pytest.raises(InvalidRequest, match="image_url"):
        parse.parse_messages([{"role": "user", "content": [{"type": "image_url"}]}])


def test_response_format() -> None:
    assert parse.parse_response_format({"type": "text"}) is None
    assert parse.parse_response_format({"type": "json_object"}) == {"schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert parse.parse_response_format(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    ) == {"schema": schema}
    with pytest.raises(InvalidRequest):
        parse.parse_response_format({"type": "json_schema", "json_schema": {"name": "x"}})


def test_tool_choice_forms() -> None:
    assert parse_tools(None, None) is None
    auto = parse_tools([TOOL], None)
    assert auto is not None and auto.mode == "auto" and auto.names == ["get_weather"]
    named = parse_tools([TOOL], {"type": "function", "function": {"name": "get_weather"}})
    assert named is not None and named.mode == "required"
    for bad_tools, choice in (
        ([TOOL], {"type": "function", "function": {"name": "nope"}}),
        ([{"type": "function"}], "auto"),
        (None, "required"),
    ):
        with pytest.raises(InvalidRequest):
            parse_tools(bad_tools, choice)


def test_parser_streams_content_and_calls_with_markers_split_across_tokens() -> None:
    parser = ToolCallParser(["get_weather"])
    text = (
        f'Sure. {REQUEST_START}{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}'
        f"{REQUEST_END}"
    )
    pieces: list[Piece] = []
    for i in range(0, len(text), 3):  # three characters at a time
        pieces += parser.feed(text[i : i + 3])
    pieces += parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str))
    calls = [p for p in pieces if isinstance(p, ToolCall)]
    assert content == "Sure. "
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    assert to_openai_call(calls[0])["type"] == "function"


def test_parser_hermes_format_and_unparseable_calls_stay_content() -> None:
    parser = ToolCallParser(["get_weather"])
    pieces = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')
    assert isinstance(pieces[0], ToolCall)
    broken = ToolCallParser(["get_weather"])
    text = f"{REQUEST_START}not json{REQUEST_END}"
    failed = broken.feed(text) + broken.finish()
    assert [type(p) for p in failed] == [FailedCall]
    assert isinstance(failed[0], FailedCall) and failed[0].text == text
    unknown = ToolCallParser(["get_weather"])
    pieces = unknown.feed(f'{REQUEST_START}{{"name": "rm", "arguments": {{}}}}{REQUEST_END}')
    assert isinstance(pieces[0], FailedCall) and "unknown tool 'rm'" in pieces[0].reason
    assert unknown.calls == []


def test_call_without_closing_marker_at_the_end_still_counts() -> None:
    parser = ToolCallParser(["get_weather"])
    parser.feed(f'{REQUEST_START}{{"name": "get_weather", "arguments": {{"city": "Rome"}}}}')
    pieces = parser.finish()
    assert isinstance(pieces[0], ToolCall) and pieces[0].arguments == '{"city": "Rome"}'


def test_fallback_messages_and_constraint() -> None:
    setup = parse_tools([TOOL], "required")
    assert setup is not None
    messages = fallback_messages(
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        ],
        setup,
    )
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]
    assert messages[0]["content"].startswith("Be nice.") and "must call" in messages[0]["content"]
    assert REQUEST_START in messages[2]["content"] and "Oslo" in messages[2]["content"]
    assert messages[3] == {"role": "user", "content": "Result of tool call c1: cold"}
    constraint = call_constraint(setup, native=False)
    # One bare call, no markers: the grammar (and the generation) ends with the call.
    assert constraint["prefix"] == constraint["suffix"] == "" and constraint["repeat"] is False
    assert constraint["schema"]["properties"]["name"] == {"const": "get_weather"}


def test_logprob_bytes_rebuild_a_character_split_across_tokens() -> None:
    globe = "🌍".encode()
    tokens = [
        TokenEvent("", 1, -0.5, [], piece="\ufffd", piece_bytes=list(globe[:2])),
        TokenEvent("🌍", 2, -0.1, [], piece="\ufffd", piece_bytes=list(globe[2:])),
    ]
    content = render.chat_logprobs(tokens)["content"]
    assert b"".join(bytes(c["bytes"]) for c in content).decode() == "🌍"


def test_finish_reasons_and_usage() -> None:
    stats = DoneEvent(StopReason.MAX_TOKENS, 5, 3, 0.1, 0.2, 15.0)
    done = PredictionDone(stats, "text", "", (), ())
    assert render.finish_reason(done) == "length"
    assert done.stop_reason == "maxPredictedTokensReached"
    called = PredictionDone(stats, "", "", (ToolCall("c1", "f", "{}"),), ())
    assert render.finish_reason(called) == "tool_calls" and called.stop_reason == "toolCalls"
    assert render.usage(stats) == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
