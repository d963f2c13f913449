"""The official `openai` Python client, unchanged, against the real daemon and model."""

import json

import jsonschema
import openai
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="not-needed", max_retries=0)


def test_lists_models(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]


def test_chat_without_and_with_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=12
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_json_schema_response_is_valid(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=200,
        seed=1,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    content = reply.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), schema)


def test_json_object_is_accepted_and_constrained(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=150,
        seed=2,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me some JSON."}],
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_required_tool_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=120,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    for call in calls:
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id
        assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_named_tool_call_when_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        max_tokens=120,
        stream=True,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls and all(c["name"] == "get_weather" and c["id"] for c in calls.values())
    assert all("city" in json.loads(c["arguments"]) for c in calls.values())


def test_a_forced_call_is_valid_json_whatever_the_sampling(client: openai.OpenAI) -> None:
    # Sampled (not greedy) with 16 seeds: before the grammar's strings excluded control
    # characters, seeds 1, 6 and 13 put a raw newline in "city" (invalid JSON, so the
    # call stayed plain content and finish_reason was "stop").
    for seed in range(16):
        reply = client.chat.completions.create(
            model=MODEL,
            max_tokens=120,
            seed=seed,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "Weather in Rome?"}],
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", (seed, choice.message.content)
        (call,) = choice.message.tool_calls or []
        assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]


def test_tool_results_go_back_to_the_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=30,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        ],
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.content


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert MODEL in str(info.value)


def test_embeddings(client: openai.OpenAI) -> None:
    from tests.fixtures import minilm

    if (reason := minilm.unavailable_reason()) is not None:
        pytest.skip(reason)
    reply = client.embeddings.create(
        model="text-embedding-all-minilm-l6-v2", input=["first text", "second text"]
    )
    assert [len(d.embedding) for d in reply.data] == [384, 384]
    assert reply.usage.prompt_tokens > 0
