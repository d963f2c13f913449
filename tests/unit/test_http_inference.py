"""Every `/v1` and `/api/v0` route, in process, against the fake engine: the real daemon
(core, app, middlewares, route table, prediction service, manager, engine boundary) with
no listener and no worker process. See tests/inprocess.py."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import CrashedWhileLoading, LoadFailed, WorkerCrashed
from daemon.http.errors import classify
from daemon.http.routes import ACCESS
from daemon.server import Daemon
from lms.api.version import API_VERSION, API_VERSION_HEADER
from tests.inprocess import Client, admin_headers, running_daemon, sse_events

CHAT = [{"role": "user", "content": "hello there friend"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(path, json=body)
    return response.status, await response.json()


def content_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if e != "[DONE]" and e["choices"]
    )


# -- chat ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_chat_completion(client: Client, prefix: str) -> None:
    status, body = await post(
        client, f"{prefix}/chat/completions", {"model": "echo", "messages": CHAT}
    )
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "echo"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hello there friend"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3
    if prefix == "/api/v0":
        assert body["stats"]["stop_reason"] == "eosFound"
        assert body["model_info"]["format"] == "gguf"
        assert body["runtime"]["name"] == "fake"
    else:
        assert "stats" not in body and "runtime" not in body


@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_chat_stream_with_usage(client: Client, prefix: str) -> None:
    response = await client.post(
        f"{prefix}/chat/completions",
        json={
            "model": "echo",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(events) == "hello there friend"
    last, usage = events[-3], events[-2]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert len({e["id"] for e in events[:-1]}) == 1
    assert ("stats" in last) is (prefix == "/api/v0")


async def test_chat_logprobs(client: Client) -> None:
    body = {"model": "echo", "messages": CHAT, "logprobs": True, "top_logprobs": 2}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 200, answer
    content = answer["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["hello ", "there ", "friend"]
    assert all(len(c["top_logprobs"]) == 2 for c in content)
    response = await client.post("/v1/chat/completions", json={**body, "stream": True})
    streamed = [
        e["choices"][0]["logprobs"]["content"][0]["token"]
        for e in await sse_events(response)
        if e != "[DONE]" and e["choices"][0]["logprobs"]
    ]
    assert streamed == ["hello ", "there ", "friend"]


async def test_seeded_babble_is_repeatable(client: Client) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": ""}], "seed": 7}
    body["max_tokens"] = 5
    first = (await post(client, "/v1/chat/completions", body))[1]
    second = (await post(client, "/v1/chat/completions", body))[1]
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "length"


# -- tools and reasoning ------------------------------------------------------------------


async def test_native_tool_call(client: Client) -> None:
    body = {"model": "toolsmith", "messages": CHAT, "tools": [WEATHER_TOOL]}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_")
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    status, v0 = await post(client, "/api/v0/chat/completions", body)
    assert v0["stats"]["stop_reason"] == "toolCalls"


async def test_streamed_tool_call_deltas(client: Client) -> None:
    body = {"model": "fallback-tools", "messages": CHAT, "tools": [WEATHER_TOOL], "stream": True}
    events = await sse_events(await client.post("/v1/chat/completions", json=body))
    deltas = [e["choices"][0]["delta"] for e in events if e != "[DONE]"]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[1] == {"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}
    assert content_of(events) == "Checking. "
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tools_are_plain_text_when_not_asked_for(client: Client) -> None:
    status, answer = await post(
        client, "/v1/chat/completions", {"model": "toolsmith", "messages": CHAT}
    )
    assert status == 200, answer
    assert "<tool_call>" in answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["finish_reason"] == "stop"


async def test_reasoning_is_separated(client: Client) -> None:
    body = {"model": "thinker", "messages": CHAT}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Four.",
        "reasoning_content": "Two and two.",
    }
    events = await sse_events(
        await client.post("/v1/chat/completions", json={**body, "stream": True})
    )
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Two and two."
    assert content_of(events) == "Four."


async def test_reasoning_stays_inline_when_the_setting_says_so(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    async with running_daemon(tmp_path, separate_reasoning=False) as daemon:
        client = await aiohttp_client(daemon.app)
        status, answer = await post(
            client, "/v1/chat/completions", {"model": "thinker", "messages": CHAT}
        )
        assert status == 200, answer
        message = answer["choices"][0]["message"]
        assert message["content"] == "<think>Two and two.</think>\n\nFour."
        assert "reasoning_content" not in message


# -- completions and embeddings -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v0"])
async def test_completion(client: Client, prefix: str) -> None:
    body = {"model": "echo", "prompt": "once upon a time", "echo": True}
    status, answer = await post(client, f"{prefix}/completions", body)
    assert status == 200, answer
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "once upon a time" + "once upon a time"
    assert ("stats" in answer) is (prefix == "/api/v0")
    events = await sse_events(
        await client.post(f"{prefix}/completions", json={**body, "stream": True})
    )
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert text == "once upon a time" and events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("prefix", "model_id"),
    [("/v1", "text-embedding-embedder"), ("/api/v0", "text-embedding-embedder@q4_k_m")],
)
async def test_embeddings(client: Client, prefix: str, model_id: str) -> None:
    status, answer = await post(
        client, f"{prefix}/embeddings", {"model": "embedder", "input": ["a b", "c"]}
    )
    assert status == 200, answer
    assert answer["model"] == model_id
    vectors = [d["embedding"] for d in answer["data"]]
    assert [len(v) for v in vectors] == [8, 8] and vectors[0] != vectors[1]
    assert answer["usage"]["prompt_tokens"] == 3


async def test_models_listings(client: Client) -> None:
    response = await client.get("/v1/models")
    ids = {m["id"] for m in (await response.json())["data"]}
    assert {"echo", "text-embedding-embedder", "toolsmith"} <= ids
    response = await client.get("/api/v0/models")
    types = {m["id"]: m["type"] for m in (await response.json())["data"]}
    assert types["text-embedding-embedder"] == "embeddings" and types["echo"] == "llm"
    response = await client.get("/api/v0/models/toolsmith")
    assert (await response.json())["capabilities"] == ["tool_use"]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": CHAT}, 404, "model_not_found"),
        (
            "/v1/chat/completions",
            {"model": "embedder", "messages": CHAT},
            400,
            "model_not_supported",
        ),
        ("/v1/embeddings", {"model": "echo", "input": "x"}, 400, "model_not_supported"),
        (
            "/v1/chat/completions",
            {"model": "echo", "messages": []},
            400,
            "missing_required_parameter",
        ),
        ("/api/v0/completions", {"model": "echo"}, 400, "missing_required_parameter"),
        (
            "/v1/chat/completions",
            {
                "model": "echo",
                "messages": CHAT,
                "tool_choice": {"type": "function", "function": "f"},
                "tools": [WEATHER_TOOL],
            },
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            {
                "model": "echo",
                "messages": [{"role": "assistant", "content": "", "tool_calls": [3]}],
            },
            400,
            "invalid_type",
        ),
    ],
)
async def test_bad_requests(
    client: Client, path: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    got, answer = await post(client, path, body)
    assert got == status, answer
    assert answer["error"]["code"] == code


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_context_is_a_400_with_both_numbers(
    client: Client, stream: bool
) -> None:
    long = " ".join(["word"] * 40)
    body = {"model": "tiny", "messages": [{"role": "user", "content": long}], "stream": stream}
    status, answer = await post(client, "/v1/chat/completions", body)
    assert status == 400, "not a stream: the error comes before any output"
    assert answer["error"]["code"] == "context_length_exceeded"
    assert "16 tokens" in answer["error"]["message"]


async def test_a_crash_mid_stream_is_an_sse_error_and_the_model_comes_back(
    client: Client, daemon: Daemon
) -> None:
    body = {"model": "crashy", "messages": CHAT, "stream": True}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    events = await sse_events(response)
    assert events[-1]["error"]["code"] == "model_crashed", events
    assert "[DONE]" not in events
    status, answer = await post(client, "/v1/chat/completions", {**body, "stream": False})
    assert status == 502 and answer["error"]["code"] == "model_crashed"
    assert "SimulatedCrash" in answer["error"]["message"]
    # The daemon lives on, and the next request loads the model again.
    status, answer = await post(client, "/v1/chat/completions", {"model": "echo", "messages": CHAT})
    assert status == 200


async def test_backpressure_is_a_503_with_retry_after(aiohttp_client: Any, tmp_path: Path) -> None:
    async with running_daemon(tmp_path, max_queue=0, default_parallel=1) as daemon:
        client = await aiohttp_client(daemon.app)
        body = {"model": "endless", "messages": CHAT, "stream": True, "max_tokens": 10_000}
        running = await client.post("/v1/chat/completions", json=body)
        await running.content.readline()  # it holds the only slot
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "server_busy"
        running.close()


# -- what the manager shows while a prediction runs ---------------------------------------


async def test_lms_ps_follows_a_stream_and_a_disconnect_ends_it(
    client: Client, daemon: Daemon
) -> None:
    body = {"model": "endless", "messages": CHAT, "stream": True, "max_tokens": 100_000}
    response = await client.post("/v1/chat/completions", json=body)
    await response.content.readline()
    admin = admin_headers(daemon)
    [instance] = await (await client.get("/api/admin/instances", headers=admin)).json()
    assert instance["identifier"] == "endless" and instance["origin"] == "jit"
    assert (instance["status"], instance["inFlight"]) == ("generating", 1)
    assert instance["pid"] is None, "the fake runs in the daemon's process"
    response.close()  # the client goes away: the generation stops, the lease ends
    inst = daemon.core.manager.instances()[0]
    for _ in range(200):
        if inst.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert (inst.in_flight, inst.generating, inst.prompt_processing) == (0, 0, 0)
    [instance] = await (await client.get("/api/admin/instances", headers=admin)).json()
    assert instance["status"] == "idle"


# -- the route table ------------------------------------------------------------------------


async def test_every_response_says_the_api_version(client: Client) -> None:
    for path in ("/health", "/v1/models", "/nope"):
        response = await client.get(path)
        assert response.headers[API_VERSION_HEADER] == str(API_VERSION)


def test_every_route_has_an_access_level_and_docs_state_the_table(daemon: Daemon) -> None:
    table = {
        (route.method, route.resource.canonical): access.value  # type: ignore[union-attr]
        for route, access in daemon.app[ACCESS].items()
    }
    registered = {
        (route.method, route.resource.canonical)  # type: ignore[union-attr]
        for route in daemon.app.router.routes()
        if route.method != "HEAD"
    }
    assert registered == set(table)
    for page in ("security.md", "daemon.md"):
        docs = (Path(__file__).parents[2] / "docs" / page).read_text()
        documented = {}
        for line in docs.splitlines():
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0] in {"GET", "POST", "DELETE"}:
                documented[(cells[0], cells[1])] = cells[2]
        assert documented == table, page


def test_a_dead_model_is_a_bad_gateway_whenever_it_dies() -> None:
    """Loading, waiting for a slot or generating: a worker that dies is a 502."""
    died = "killed by signal SIGKILL"
    assert classify(CrashedWhileLoading(f"the model worker died while loading m: {died}"))[0] == 502
    assert classify(WorkerCrashed(4242, died)) == (502, "server_error", "model_crashed")
    assert classify(LoadFailed("not a model"))[0] == 500
