"""OpenAI features real clients use, in process against the fake engine (tests/inprocess.py):
base64 embeddings (the official client asks for them by default), token-id prompts and
inputs, `n` choices, and forced tool calls without a stray whitespace delta."""

import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from daemon.engines.fake_impl import GGUF_OPTIONS_KEY, VOCAB_SIZE
from daemon.server import Daemon
from tests.fixtures.gguf_factory import TOOL_TEMPLATE, write_gguf
from tests.inprocess import PARIS_CALL, Client, running_daemon, sse_events

CHAT = [{"role": "user", "content": "hello there friend"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# Fake models of this file's own, next to tests/inprocess.py's: a native call followed by
# a newline (as real models write it), and a forced call's bare JSON.
EXTRA_MODELS = {
    "spacey": f"<tool_call>\n{PARIS_CALL}\n</tool_call>\n",
    "bare": PARIS_CALL,
}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    for key, reply in EXTRA_MODELS.items():
        write_gguf(
            tmp_path / "models" / "test" / key / f"{key}-Q4_K_M.gguf",
            arch="llama",
            name=key,
            chat_template=TOOL_TEMPLATE,
            context_length=4096,
            extra={GGUF_OPTIONS_KEY: json.dumps({"reply": reply})},
        )
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


@pytest.fixture
async def official(client: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, talking to the test server's real socket."""
    async with openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0
    ) as oa:
        yield oa


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(path, json=body)
    return response.status, await response.json()


def decode(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# -- 1. encoding_format -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_base64_embeddings_are_little_endian_float32(client: Client, prefix: str) -> None:
    texts = ["a cat", "quantum chromodynamics"]
    body = {"model": "embedder", "input": texts}
    status, floats = await post(client, f"{prefix}/embeddings", body)
    assert status == 200, floats
    status, encoded = await post(
        client, f"{prefix}/embeddings", {**body, "encoding_format": "base64"}
    )
    assert status == 200, encoded
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(packed["embedding"], str)
        vector = decode(packed["embedding"])
        assert len(vector) == len(plain["embedding"]) == 8
        assert vector == pytest.approx(plain["embedding"], rel=1e-6)
        assert packed["index"] == plain["index"]
    assert encoded["usage"] == floats["usage"]
    status, same = await post(client, f"{prefix}/embeddings", {**body, "encoding_format": "float"})
    assert status == 200 and same["data"] == floats["data"]


async def test_unknown_encoding_format_is_400(client: Client) -> None:
    body = {"model": "embedder", "input": "x", "encoding_format": "int8"}
    status, answer = await post(client, "/v1/embeddings", body)
    assert status == 400
    assert answer["error"]["param"] == "encoding_format"
    assert "'float' or 'base64'" in answer["error"]["message"]


async def test_official_client_decodes_base64_embeddings(
    client: Client, official: openai.AsyncOpenAI
) -> None:
    texts = ["a cat", "a dog"]
    status, floats = await post(client, "/v1/embeddings", {"model": "embedder", "input": texts})
    assert status == 200
    default = await official.embeddings.create(model="embedder", input=texts)  # base64
    assert [d.index for d in default.data] == [0, 1]
    for got, want in zip(default.data, floats["data"], strict=True):
        assert got.embedding == pytest.approx(want["embedding"], rel=1e-6)
    plain = await official.embeddings.create(model="embedder", input=texts, encoding_format="float")
    assert [d.embedding for d in plain.data] == [d["embedding"] for d in floats["data"]]


# -- 2. token ids -------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [[11, 22, 33], [[11, 22, 33]]])
async def test_completion_prompt_of_token_ids(client: Client, prompt: Any) -> None:
    body = {"model": "echo", "prompt": prompt, "max_tokens": 4, "seed": 3}
    status, answer = await post(client, "/v1/completions", body)
    assert status == 200, answer
    assert answer["usage"]["prompt_tokens"] == 3  # the ids as they are, not re-tokenized
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["text"]  # nothing to echo: the fake babbles


async def test_official_client_sends_token_ids(official: openai.AsyncOpenAI) -> None:
    answer = await official.completions.create(model="echo", prompt=[5, 6], max_tokens=2)
    assert answer.usage is not None and answer.usage.prompt_tokens == 2
    vectors = await official.embeddings.create(model="embedder", input=[[1, 2, 3], [4]])
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens == 4


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (["one", "two"], "one prompt per request"),
        ([[1, 2], [3]], "one prompt per request"),
        ([1, -2], "non-negative"),
        ([], "must be a string"),
        ([1, "a"], "must be a string"),
        ([True], "must be a string"),
        ([VOCAB_SIZE], f"token id {VOCAB_SIZE}, which is not in the model's vocabulary"),
    ],
)
async def test_bad_prompts_are_400(client: Client, prompt: Any, message: str) -> None:
    status, answer = await post(client, "/v1/completions", {"model": "echo", "prompt": prompt})
    assert status == 400, answer
    assert answer["error"]["param"] == "prompt"
    assert message in answer["error"]["message"]


async def test_echo_needs_a_text_prompt(client: Client) -> None:
    body = {"model": "echo", "prompt": [1, 2], "echo": True}
    status, answer = await post(client, "/v1/completions", body)
    assert status == 400 and answer["error"]["param"] == "echo"


async def test_embedding_inputs_of_token_ids(client: Client) -> None:
    status, single = await post(client, "/v1/embeddings", {"model": "embedder", "input": [7, 8]})
    assert status == 200, single
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] == 2
    body = {"model": "embedder", "input": [[7, 8], [9], [7, 8]]}
    status, batch = await post(client, "/v1/embeddings", body)
    assert status == 200, batch
    assert [d["index"] for d in batch["data"]] == [0, 1, 2]
    assert batch["usage"]["prompt_tokens"] == 5
    assert (
        batch["data"][0]["embedding"]
        == batch["data"][2]["embedding"]
        == single["data"][0]["embedding"]
    )
    assert batch["data"][1]["embedding"] != batch["data"][0]["embedding"]
    for bad, message in (([[1], [VOCAB_SIZE + 5]], "vocabulary"), ([[1], []], "must be")):
        status, answer = await post(client, "/v1/embeddings", {"model": "embedder", "input": bad})
        assert status == 400, answer
        assert answer["error"]["param"] == "input" and message in answer["error"]["message"]


# -- 4. n ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_n_chat_choices(client: Client, prefix: str) -> None:
    status, one = await post(
        client, f"{prefix}/chat/completions", {"model": "echo", "messages": CHAT}
    )
    assert status == 200
    body = {"model": "echo", "messages": CHAT, "n": 3}
    status, answer = await post(client, f"{prefix}/chat/completions", body)
    assert status == 200, answer
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "hello there friend" for c in answer["choices"])
    usage = answer["usage"]
    assert usage["prompt_tokens"] == one["usage"]["prompt_tokens"]  # the prompt once
    assert usage["completion_tokens"] == 3 * 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9


async def test_n_with_a_seed_gives_seed_seed_plus_one(client: Client) -> None:
    babble = {"model": "echo", "messages": [{"role": "user", "content": ""}], "max_tokens": 6}
    status, answer = await post(client, "/v1/chat/completions", {**babble, "seed": 7, "n": 2})
    assert status == 200, answer
    texts = [c["message"]["content"] for c in answer["choices"]]
    assert texts[0] != texts[1]
    for i, seed in enumerate((7, 8)):
        alone = (await post(client, "/v1/chat/completions", {**babble, "seed": seed}))[1]
        assert alone["choices"][0]["message"]["content"] == texts[i]


async def test_n_streamed_interleaves_choices(client: Client) -> None:
    body = {
        "model": "echo",
        "messages": CHAT,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    events = await sse_events(response)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    assert len({e["id"] for e in chunks}) == 1
    text = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        text[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert text == {0: "hello there friend", 1: "hello there friend"}
    assert finishes == {0: "stop", 1: "stop"}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


async def test_n_completions_streamed_and_not(client: Client) -> None:
    body = {"model": "echo", "prompt": "one two", "n": 2}
    status, answer = await post(client, "/v1/completions", body)
    assert status == 200, answer
    assert [(c["index"], c["text"]) for c in answer["choices"]] == [(0, "one two"), (1, "one two")]
    assert answer["usage"]["completion_tokens"] == 4
    response = await client.post("/v1/completions", json={**body, "stream": True})
    events = await sse_events(response)
    text = {0: "", 1: ""}
    for event in events[:-1]:
        for choice in event["choices"]:
            text[choice["index"]] += choice["text"]
    assert text == {0: "one two", 1: "one two"}


async def test_official_client_n(official: openai.AsyncOpenAI) -> None:
    answer = await official.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "hi you"}],
        n=2,
    )
    assert [(c.index, c.message.content) for c in answer.choices] == [(0, "hi you"), (1, "hi you")]


@pytest.mark.parametrize("n", [0, 17, "2"])
async def test_bad_n_is_400(client: Client, n: Any) -> None:
    body = {"model": "echo", "messages": CHAT, "n": n}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 400 and answer["error"]["param"] == "n"


async def test_n_errors_before_output_stay_http_errors(client: Client) -> None:
    long = {"model": "tiny", "prompt": "word " * 40, "n": 2}
    for stream in (False, True):
        status, answer = await post(client, "/v1/completions", {**long, "stream": stream})
        assert status == 400 and answer["error"]["code"] == "context_length_exceeded"


# -- 5. forced tool calls -----------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", "auto"])
async def test_no_stray_whitespace_delta_after_a_call(client: Client, choice: str) -> None:
    body = {"model": "spacey", "messages": CHAT, "tools": [WEATHER_TOOL], "tool_choice": choice}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    response = await client.post("/v1/chat/completions", json={**body, "stream": True})
    events = [e for e in await sse_events(response) if e != "[DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d for d in deltas[1:] if "content" in d] == []
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_forced_call_may_be_bare_json(client: Client) -> None:
    body = {"model": "bare", "messages": CHAT, "tools": [WEATHER_TOOL]}
    status, forced = await post(client, "/v1/chat/completions", {**body, "tool_choice": "required"})
    assert status == 200, forced
    [call] = forced["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    named = {"type": "function", "function": {"name": "get_weather"}}
    status, by_name = await post(client, "/v1/chat/completions", {**body, "tool_choice": named})
    assert by_name["choices"][0]["finish_reason"] == "tool_calls"
    # Not forced: bare JSON is what the model said, as text.
    status, auto = await post(client, "/v1/chat/completions", body)
    assert auto["choices"][0]["message"] == {"role": "assistant", "content": PARIS_CALL}
