"""The official `anthropic` Python SDK, unchanged, against the real daemon and model
(`POST /v1/messages`, `/v1/messages/count_tokens`)."""

from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.integration.conftest import RunningDaemon

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}
HI: list[MessageParam] = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0) as client:
        yield client


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=12,
        system="You are terse.",
        messages=HI,
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content and message.content[0].type == "text"
    assert message.content[0].text
    assert 0 < message.usage.output_tokens <= 12
    assert message.usage.input_tokens > 0


def test_stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=12, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces and "".join(pieces)
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 12
    assert final.usage.input_tokens > 0


def test_tool_use_over_two_turns(client: anthropic.Anthropic) -> None:
    question: MessageParam = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(
        model=MODEL,
        max_tokens=64,  # a whole call: the grammar keeps it short (city <= 12 characters)
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    )
    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert calls
    call = calls[0]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and isinstance(call.input.get("city"), str)

    second = client.messages.create(
        model=MODEL,
        max_tokens=12,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}
                ],
            },
        ],
    )
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.content
    assert second.usage.input_tokens > first.usage.input_tokens


def test_count_tokens(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, system="You are terse.", messages=HI)
    message = client.messages.create(
        model=MODEL,
        max_tokens=1,
        system="You are terse.",
        messages=HI,
    )
    assert counted.input_tokens == message.usage.input_tokens
    with_tools = client.messages.count_tokens(
        model=MODEL,
        messages=HI,
        tools=[WEATHER_TOOL],
    )
    assert with_tools.input_tokens > counted.input_tokens


def test_errors_are_the_sdks_typed_exceptions(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HI)
    assert missing.value.status_code == 404
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=HI, extra_body={"temperature": 3}
        )
    assert "temperature" in str(bad.value)
