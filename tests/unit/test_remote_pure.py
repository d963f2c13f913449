"""The pure parts of the remote backends: the circuit breaker (clock injected), the
routing policy, and the translation between engine requests and OpenAI bodies/chunks."""

from typing import Any

import pytest

from daemon.engines.base import ChatRequest, CompletionRequest, GenerationParams, StopReason
from daemon.errors import (
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ServerBusy,
    UpstreamUnavailable,
)
from daemon.remote.breaker import BreakerState, CircuitBreaker
from daemon.remote.config import UpstreamConfig, upstream_from_dict
from daemon.remote.policy import falls_through, route_order
from daemon.remote.translate import (
    BadChunk,
    StreamState,
    done_event,
    model_ids,
    read_chunk,
    read_embeddings,
    request_body,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- breaker ------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_and_half_opens_after_reset() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, reset_after=30, clock=clock)
    assert breaker.allow()
    assert not breaker.failure() and not breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failure()  # the third in a row opens it
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow() and not breaker.available()
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    assert breaker.success()  # the probe closes it
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0 and breaker.allow()


def test_breaker_failed_probe_opens_again_for_another_period() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, reset_after=10, clock=clock)
    assert breaker.failure()
    clock.now += 10
    assert breaker.allow()
    assert breaker.failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_breaker_success_clears_failures() -> None:
    breaker = CircuitBreaker(threshold=2, reset_after=10, clock=Clock())
    breaker.failure()
    assert not breaker.success()  # it was not open
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED


# -- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "local", "remote", "order"),
    [
        ("local_only", True, True, ["local"]),
        ("local_only", False, True, []),
        ("prefer_local", True, True, ["local", "remote"]),
        ("prefer_local", False, True, ["remote"]),
        ("prefer_remote", True, True, ["remote", "local"]),
        ("prefer_remote", True, False, ["local"]),
        ("spill_over", True, True, ["local", "remote"]),
    ],
)
def test_route_order(policy: Any, local: bool, remote: bool, order: list[str]) -> None:
    assert route_order(policy, local=local, remote=remote) == order


def test_falls_through() -> None:
    busy = ServerBusy("full")
    assert falls_through("spill_over", "local", busy)
    assert not falls_through(
        "spill_over", "local", InsufficientMemory("x", needed_bytes=1, available_bytes=0)
    )
    assert falls_through(
        "prefer_local", "local", InsufficientMemory("x", needed_bytes=1, available_bytes=0)
    )
    assert falls_through("prefer_local", "local", ModelNotFound("x"))
    assert not falls_through("prefer_local", "local", InvalidRequest("bad"))
    assert falls_through("prefer_remote", "remote", UpstreamUnavailable("down"))
    assert not falls_through("prefer_remote", "remote", InvalidRequest("bad"))


# -- config -------------------------------------------------------------------------------


def test_upstream_config_checks_and_hides_the_key() -> None:
    up = upstream_from_dict(
        {
            "name": "gpu-box",
            "base_url": "http://10.0.0.2:8000/v1/",
            "api_key": "sk-secret",
            "models": ["qwen", "llama=big-llama"],
        }
    )
    assert up.v1 == "http://10.0.0.2:8000/v1"
    assert up.exposed("llama") == "big-llama" and up.exposed("qwen") == "qwen"
    assert up.exposed("other") is None
    assert "sk-secret" not in repr(up) and "sk-secret" not in str(up.public())
    assert up.public()["api_key_set"] is True
    assert UpstreamConfig("a", "http://h").exposed("anything") == "anything"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bad Name", "base_url": "http://h"}, "name"),
        ({"name": "a", "base_url": "ftp://h"}, "base_url"),
        ({"name": "a", "base_url": "http://user:pw@h"}, "base_url"),
        ({"name": "a", "base_url": "http://h", "api_key": "a\nb"}, "api_key"),
        ({"name": "a", "base_url": "http://h", "max_in_flight": 0}, "max_in_flight"),
        ({"name": "a", "base_url": "http://h", "idle_timeout": float("nan")}, "idle_timeout"),
        ({"name": "a", "base_url": "http://h", "models": [3]}, "models"),
    ],
)
def test_upstream_config_refuses(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        upstream_from_dict(body)
    assert caught.value.param == param


# -- translation --------------------------------------------------------------------------


def test_chat_body_carries_messages_tools_and_params() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    params = GenerationParams(max_tokens=5, temperature=0.0, seed=7, stop=["x"])
    path, body = request_body("m", ChatRequest([{"role": "user", "content": "hi"}], tools, params))
    assert path == "/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["tools"] == tools
    assert body["max_tokens"] == 5 and body["seed"] == 7 and body["stop"] == ["x"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_completion_body_and_refusals() -> None:
    path, body = request_body("m", CompletionRequest("Once", GenerationParams()))
    assert path == "/completions" and body["prompt"] == "Once" and "max_tokens" not in body
    with pytest.raises(InvalidRequest):
        request_body("m", CompletionRequest("x", GenerationParams(grammar="root ::= 'a'")))
    with pytest.raises(InvalidRequest):
        request_body("m", CompletionRequest("x", GenerationParams(logprobs=True)))
    structured = {"schema": {"type": "object"}}
    _, body = request_body("m", CompletionRequest("x", GenerationParams(structured=structured)))
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_chunks_become_text_tool_calls_and_stats() -> None:
    state = StreamState()
    assert read_chunk({"choices": [{"delta": {"role": "assistant"}}]}, state) == ""
    assert read_chunk({"choices": [{"delta": {"content": "Hel"}}]}, state) == "Hel"
    assert read_chunk({"choices": [{"text": "lo"}]}, state) == "lo"
    call = {"index": 0, "function": {"name": "get_weather", "arguments": '{"city":'}}
    read_chunk({"choices": [{"delta": {"tool_calls": [call]}}]}, state)
    more = {"index": 0, "function": {"arguments": '"Paris"}'}}
    read_chunk({"choices": [{"delta": {"tool_calls": [more]}, "finish_reason": "length"}]}, state)
    read_chunk({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}, state)
    assert state.calls_text() == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    done = done_event(state, time_to_first_token=0.5, generation_time=2.0)
    assert done.stop_reason is StopReason.MAX_TOKENS
    assert (done.prompt_tokens, done.completion_tokens) == (4, 9)
    assert done.tokens_per_second == 4.5


@pytest.mark.parametrize(
    "chunk",
    [
        [],
        {"choices": "x"},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": -1}]}}]},
        {"error": {"message": "boom"}},
    ],
)
def test_bad_chunks(chunk: Any) -> None:
    with pytest.raises(BadChunk):
        read_chunk(chunk, StreamState())


def test_embeddings_in_input_order_and_checked() -> None:
    data = {
        "data": [{"index": 1, "embedding": [0.0, 1]}, {"index": 0, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 3},
    }
    assert read_embeddings(data, 2) == ([[1.0, 0.0], [0.0, 1.0]], 3)
    with pytest.raises(BadChunk):
        read_embeddings(data, 3)
    with pytest.raises(BadChunk):
        read_embeddings({"data": [{"embedding": ["x"]}]}, 1)


def test_model_ids_keep_only_printable_bounded_strings() -> None:
    data = {"data": [{"id": "a"}, {"id": 3}, {"id": "x\x1b[2J"}, {"id": "b" * 600}, "c"]}
    assert model_ids(data) == ["a"]
    with pytest.raises(BadChunk):
        model_ids({"data": "nope"})
