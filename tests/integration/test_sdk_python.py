"""LM Studio's own Python SDK (`lmstudio`, pinned in pyproject's dev extra), unmodified,
against the real daemon with SmolLM2 and the MiniLM embedding fixture (docs/sdk.md).
SmolLM2-135M answers poorly: these tests check the plumbing, never the wording."""

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon
from tests.support import smollm2_file

lms = pytest.importorskip("lmstudio")

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
EMBEDDER = "text-embedding-all-minilm-l6-v2"
SHORT = {"maxTokens": 8, "temperature": 0}


def host_of(daemon: RunningDaemon) -> str:
    return daemon.url.removeprefix("http://")


@pytest.fixture
def client(daemon: RunningDaemon) -> Iterator[Any]:
    with lms.Client(host_of(daemon)) as client:
        yield client


def instances(daemon: RunningDaemon) -> dict[str, dict[str, Any]]:
    return {i["identifier"]: i for i in daemon.lms.json("ps", "--json")}


def needs_embedder(daemon: RunningDaemon) -> None:
    from tests.fixtures import minilm

    reason = minilm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_list_downloaded_models(client: Any) -> None:
    models = {m.model_key: m for m in client.list_downloaded_models()}
    assert models[MODEL].type == "llm"
    assert all(m.type in ("llm", "embedding") for m in models.values())
    assert {m.model_key for m in client.llm.list_downloaded()} >= {MODEL}


def test_model_loads_just_in_time_with_the_ttl(client: Any, daemon: RunningDaemon) -> None:
    model = client.llm.model(MODEL, ttl=321)
    assert model.identifier == MODEL
    loaded = instances(daemon)[MODEL]
    assert loaded["origin"] == "jit" and loaded["ttlMs"] == 321_000
    assert [m.identifier for m in client.llm.list_loaded()] == [MODEL]
    assert model.get_context_length() == 1024
    info = model.get_info()
    assert info.identifier == MODEL and info.context_length == 1024


def test_respond_and_complete(client: Any) -> None:
    model = client.llm.model(MODEL)
    result = model.respond("Say hello.", config=SHORT)
    assert isinstance(result.content, str) and result.content
    assert result.stats.stop_reason in ("eosFound", "maxPredictedTokensReached")
    assert result.stats.predicted_tokens_count and result.stats.predicted_tokens_count <= 8
    assert result.model_info.model_key == MODEL
    completion = model.complete("Once upon a time", config=SHORT)
    assert completion.content and completion.stats.predicted_tokens_count <= 8


def test_respond_stream_and_cancel(client: Any, daemon: RunningDaemon) -> None:
    model = client.llm.model(MODEL)
    stream = model.respond_stream("Count from one to a thousand.", config={"maxTokens": 500})
    fragments = []
    for fragment in stream:
        fragments.append(fragment.content)
        if len(fragments) == 2:
            stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert len(fragments) < 500
    assert instances(daemon)[MODEL]["inFlight"] == 0


def test_structured_respond_with_a_json_schema(client: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    model = client.llm.model(MODEL)
    result = model.respond("Is the sky blue?", response_format=schema, config={"maxTokens": 64})
    assert isinstance(result.parsed, dict), result.content
    assert isinstance(result.parsed["ok"], bool)


def few_shot_tool_chat() -> Any:
    """A chat whose earlier turns call the tool in LM Studio's default tool format (the
    daemon's format for a model whose template has no tools): SmolLM2-135M, greedy,
    follows the pattern and calls the tool for the last question."""
    chat = lms.Chat()
    for a, b in ((1, 1), (4, 4), (2, 5)):
        chat.add_user_message(f"What is {a} + {b}?")
        call = {"name": "add", "arguments": {"a": a, "b": b}}
        chat.add_assistant_response(f"[TOOL_REQUEST]{json.dumps(call)}[END_TOOL_REQUEST]")
        chat.add_user_message(f"Result: {a + b}")
        chat.add_assistant_response(f"{a} + {b} = {a + b}")
    chat.add_user_message("What is 2 + 3?")
    return chat


def test_act_runs_a_python_tool_over_two_rounds(client: Any) -> None:
    calls: list[dict[str, Any]] = []

    def add(a: int, b: int) -> int:
        """Add two integers and return the sum."""
        calls.append({"a": a, "b": b})
        return a + b

    messages: list[Any] = []
    model = client.llm.model(MODEL)
    result = model.act(
        few_shot_tool_chat(),
        [add],
        max_prediction_rounds=2,
        config={"maxTokens": 80, "temperature": 0},
        on_message=messages.append,
    )
    assert calls == [{"a": 2, "b": 3}]
    assert result.rounds == 2
    # The call, its result (sent back for the second round), then the final answer.
    assert [m.role for m in messages] == ["assistant", "tool", "assistant"]
    assert messages[1].content[0].content == "5"


def test_load_new_instance_and_unload(client: Any, daemon: RunningDaemon) -> None:
    handle = client.llm.load_new_instance(MODEL, "sdk-extra", ttl=300)
    assert handle.identifier == "sdk-extra"
    assert instances(daemon)["sdk-extra"]["ttlMs"] == 300_000
    handle.unload()
    assert "sdk-extra" not in instances(daemon)
    assert "sdk-extra" not in [m.identifier for m in client.llm.list_loaded()]


def test_tokens_and_prompt_template(client: Any) -> None:
    model = client.llm.model(MODEL)
    assert model.count_tokens("Hello there, world") > 0
    chat = lms.Chat("Be brief.")
    chat.add_user_message("Hi")
    formatted = model.apply_prompt_template(chat)
    assert "Be brief." in formatted and "Hi" in formatted


def test_tokenize_gives_the_ids_llama_cpp_makes(client: Any) -> None:
    """The ids come from the model's own vocabulary: llama.cpp, reading only the same file's
    vocabulary here in the test, makes the same ones (BOS first, as for a prompt)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = smollm2_file()
    assert path is not None
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    text = "Hello there, world <|im_start|>"
    expected = vocab.tokenize(text.encode(), add_bos=True, special=True)
    model = client.llm.model(MODEL)
    assert list(model.tokenize(text)) == expected
    assert len(expected) == model.count_tokens(text)
    assert [list(t) for t in model.tokenize(["one", "two three"])] == [
        vocab.tokenize(b"one", add_bos=True, special=True),
        vocab.tokenize(b"two three", add_bos=True, special=True),
    ]


def test_unknown_model_is_model_not_found(client: Any) -> None:
    with pytest.raises(lms.LMStudioModelNotFoundError):
        client.llm.model("no-such-model-anywhere")


def test_embed(client: Any, daemon: RunningDaemon) -> None:
    needs_embedder(daemon)
    model = client.embedding.model(EMBEDDER)
    vector = model.embed("Some text to embed")
    assert len(vector) == 384
    assert len(model.embed(["one", "two"])) == 2
    assert model.get_context_length() > 0


def test_async_client(daemon: RunningDaemon) -> None:
    async def run() -> None:
        async with lms.AsyncClient(host_of(daemon)) as client:
            models = await client.list_downloaded_models()
            assert MODEL in {m.model_key for m in models}
            model = await client.llm.model(MODEL)
            result = await model.respond("Say hi.", config=SHORT)
            assert result.content
            stream = await model.respond_stream("Count to a hundred.", config={"maxTokens": 200})
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    await stream.cancel()
            assert stream.result().stats.stop_reason == "userStopped"
            assert await model.count_tokens("Hello") > 0
            assert await model.get_context_length() == 1024
            loaded = await client.llm.list_loaded()
            assert MODEL in [m.identifier for m in loaded]

    asyncio.run(run())


def _pid(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/api/admin/status", timeout=5) as response:
            return int(json.load(response)["pid"])
    except OSError:
        return None


def test_zero_config_finds_the_daemon(daemon: RunningDaemon) -> None:
    ours = _pid(daemon.url)
    found = _pid("http://127.0.0.1:41343")
    if found is None:
        # Nobody there now: an earlier daemon (another module's) held the port when this
        # one started. The discovery listener follows the HTTP listener: restart it.
        port = daemon.url.rsplit(":", 1)[1]
        daemon.lms("server", "stop", check=True)
        daemon.lms("server", "start", "--port", port, check=True)
        found = _pid("http://127.0.0.1:41343")
    if found != ours:
        pytest.skip(
            "LM Studio's SDK port 127.0.0.1:41343 is held by another server "
            f"(pid {found}): the daemon leaves discovery to it"
        )
    with lms.Client() as client:  # no host: the SDK's own discovery
        assert client.api_host == "127.0.0.1:41343"
        assert MODEL in {m.model_key for m in client.list_downloaded_models()}
    model = lms.llm(MODEL)  # the convenience API's default client
    assert model.respond("Hi", config=SHORT).content
