"""OpenAI features real clients use, against the real daemon and SmolLM2 (llama.cpp): token-id
prompts, `usage.prompt_tokens_details.cached_tokens` from the slots' prompt cache, and
forced tool calls that end with the call."""

import json
from collections.abc import Iterator
from typing import Any

import llama_cpp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from tests.integration.conftest import RunningDaemon
from tests.support import post_json, smollm2_file

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
SMOLLM2_VOCAB = 49152
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", max_retries=0) as oa:
        yield oa


def tokenize(text: str) -> list[int]:
    """SmolLM2's own tokens for `text` (a vocabulary-only load), as the engine reads a
    text prompt: BOS added where the model adds one, special tokens parsed."""
    path = smollm2_file()
    assert path is not None
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return list(vocab.tokenize(text.encode(), add_bos=True, special=True))
    finally:
        vocab.close()


def test_a_prompt_of_token_ids_is_the_same_as_its_text(client: openai.OpenAI) -> None:
    text = "The capital of France is"
    ids = tokenize(text)
    assert 2 < len(ids) < 12 and max(ids) < SMOLLM2_VOCAB
    by_text = client.completions.create(model=MODEL, prompt=text, max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.usage is not None and by_text.usage is not None
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.choices[0].text.strip()


def test_token_ids_outside_the_vocabulary_are_400(daemon: RunningDaemon) -> None:
    body = {"model": MODEL, "prompt": [1, 2, SMOLLM2_VOCAB], "max_tokens": 4}
    status, answer = post_json(f"{daemon.url}/v1/completions", body)
    assert status == 400, answer
    assert answer["error"]["param"] == "prompt"
    assert f"token id {SMOLLM2_VOCAB}" in answer["error"]["message"]


def test_a_repeated_chat_reports_cached_prompt_tokens(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a colour of the rainbow, please."},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # Everything but the last prompt token (read again for its logits) came from the cache.
    assert details.cached_tokens == second.usage.prompt_tokens - 1
    raw = client.completions.create(model=MODEL, prompt="Zebras run", max_tokens=2)
    assert raw.usage is not None
    assert raw.usage.prompt_tokens_details is not None
    assert raw.usage.prompt_tokens_details.cached_tokens is not None
    assert raw.usage.prompt_tokens_details.cached_tokens < raw.usage.prompt_tokens - 1


def test_a_forced_call_ends_with_the_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=40,
        temperature=0,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        messages=WEATHER_QUESTION,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert choice.message.content is None
    # The grammar ended with the call's closing brace: no markers, no limit reached.
    assert reply.usage is not None and reply.usage.completion_tokens < 40
    named = client.chat.completions.create(
        model=MODEL,
        max_tokens=40,
        temperature=0,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=WEATHER_QUESTION,
    )
    assert named.choices[0].finish_reason == "tool_calls"
    assert (
        named.usage is not None and named.usage.completion_tokens == reply.usage.completion_tokens
    )


def test_a_streamed_forced_call_has_no_stray_content(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            max_tokens=40,
            temperature=0,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            messages=WEATHER_QUESTION,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [d.content for d in deltas if d.content] == []  # no content beside the call
    calls = [call for d in deltas for call in (d.tool_calls or [])]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join((c.function.arguments or "") for c in calls if c.function)
    assert isinstance(json.loads(arguments)["city"], str)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
