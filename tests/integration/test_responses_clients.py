"""OpenAI's Responses API (`/v1/responses`) with real clients, unchanged, against the real
daemon and SmolLM2: the official `openai` SDK, LangChain (`use_responses_api=True`) and
pydantic-ai (`OpenAIResponsesModel`). Generations are kept short."""

import asyncio
import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
TOOLS: Any = [WEATHER]  # the SDK types tools as TypedDicts; these are plain dicts
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}},
    "required": ["name"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="not-needed", max_retries=0)


def test_create_retrieve_and_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Say hi", instructions="Be brief.", max_output_tokens=12
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None and 0 < response.usage.output_tokens <= 12
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.instructions == "Be brief." and response.max_output_tokens == 12

    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_streamed_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input="Say hi", max_output_tokens=8, stream=True)
    )
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and final.output_text == deltas


def test_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Reply with one word: OK", max_output_tokens=16
    ) as stream:
        events = list(stream)
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        last = events[-1]
        assert deltas
        if last.type == "response.completed":
            assert stream.get_final_response().output_text == deltas
        else:  # cut by length: the helper's final response needs response.completed
            assert last.type == "response.incomplete"
            assert last.response.output_text == deltas


def test_function_tools_over_two_turns(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=TOOLS,
        tool_choice="required",
        max_output_tokens=48,  # the call's JSON alone is more than 16 tokens
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)

    output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}]
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=output,
        tools=TOOLS,
        max_output_tokens=16,
    )
    assert second.previous_response_id == first.id
    assert second.status in ("completed", "incomplete")
    assert second.output


def test_previous_response_id_chains(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=8)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    # The stored conversation goes first: the second prompt is longer than its own input,
    # and the part the first turn already read comes from the slot's prompt cache.
    assert second.usage.input_tokens > first.usage.input_tokens
    cached = second.usage.input_tokens_details.cached_tokens
    assert first.usage.input_tokens - 1 <= cached < second.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.create(
            model=MODEL, input="x", previous_response_id="resp_unknown", max_output_tokens=4
        )


def test_json_schema_output(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Give a person's name as JSON.",
        text={"format": {"type": "json_schema", "name": "x", "schema": PERSON, "strict": True}},
        max_output_tokens=16,
    )
    assert response.status == "completed", response.output_text
    data = json.loads(response.output_text)
    jsonschema.validate(data, PERSON)


def test_bad_requests_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=[], max_output_tokens=4)
    assert "input" in str(caught.value)


def test_langchain_with_the_responses_api(daemon: RunningDaemon) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat: Any = langchain_openai.ChatOpenAI(
        base_url=f"{daemon.url}/v1",
        api_key="x",
        model=MODEL,
        use_responses_api=True,
        max_tokens=12,
        max_retries=0,
    )
    reply = chat.invoke("Say hi")
    assert reply.text
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0


def test_pydantic_ai_with_the_responses_model(daemon: RunningDaemon) -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    async def ask() -> Any:
        # Our own client, closed at the end (`run_sync` would leave its connection open).
        async with openai.AsyncOpenAI(
            base_url=f"{daemon.url}/v1", api_key="x", max_retries=0
        ) as openai_client:
            model = OpenAIResponsesModel(
                MODEL, provider=OpenAIProvider(openai_client=openai_client)
            )
            agent = Agent(model, model_settings={"max_tokens": 12})
            return (await agent.run("Say hi")).output

    output = asyncio.run(ask())
    assert isinstance(output, str) and output
