"""Remote backends end to end, in process: an upstream daemon of ours (fake engine)
served on loopback by aiohttp's test server, and a front daemon that lists and serves its
models through every API surface. Fast: no worker process, no real model."""

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.remote.config import upstream_from_dict
from daemon.server import Daemon
from tests.inprocess import Client, admin_headers, running_daemon, sse_events

CHAT = [{"role": "user", "content": "hello there friend"}]
SECRET_NAME = "upstream-key-test"


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path / "up", require_api_key=True) as daemon:
        yield daemon


@pytest.fixture
async def upstream_url(aiohttp_server: Any, upstream: Daemon) -> str:
    server = await aiohttp_server(upstream.app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def upstream_key(upstream: Daemon) -> str:
    return upstream.keys.create(SECRET_NAME, "inference")[1]


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Daemon]:
    empty = tmp_path / "front-models"
    empty.mkdir()
    async with running_daemon(tmp_path / "front", models_dirs=[str(empty)]) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, front: Daemon) -> Client:
    return await aiohttp_client(front.app)  # type: ignore[no-any-return]


async def add(front: Daemon, name: str, url: str, **extra: Any) -> None:
    await front.core.upstreams.add(upstream_from_dict({"name": name, "base_url": url, **extra}))


async def post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(path, json=body)
    return response.status, await response.json()


async def test_remote_models_listed_in_every_listing(
    client: Client, front: Daemon, upstream_url: str, upstream_key: str
) -> None:
    await add(
        front,
        "up",
        upstream_url,
        api_key=upstream_key,
        models=["echo", "text-embedding-embedder=far-embed"],
    )
    ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert ids == ["echo", "far-embed"]
    v0 = {m["id"]: m for m in (await (await client.get("/api/v0/models")).json())["data"]}
    assert v0["echo"]["compatibility_type"] == "remote" and v0["echo"]["remote"] == ["up"]
    assert v0["echo"]["deviceIdentifier"] == "up" and v0["far-embed"]["type"] == "embeddings"
    v1 = (await (await client.get("/api/v1/models")).json())["models"]
    assert [(m["key"], m["remote"]) for m in v1] == [("echo", ["up"]), ("far-embed", ["up"])]
    admin = await client.get("/api/admin/models", headers=admin_headers(front))
    listed = (await admin.json())["models"]
    assert {m["modelKey"]: m["format"] for m in listed} == {"echo": "remote", "far-embed": "remote"}
    assert (await client.get("/v1/models/echo")).status == 200


async def test_every_surface_reaches_the_upstream(
    client: Client, front: Daemon, upstream_url: str, upstream_key: str
) -> None:
    await add(
        front,
        "up",
        upstream_url,
        api_key=upstream_key,
        models=["echo", "text-embedding-embedder=far-embed", "toolsmith"],
    )
    status, body = await post(client, "/v1/chat/completions", {"model": "echo", "messages": CHAT})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello there friend"
    assert body["usage"]["completion_tokens"] == 3

    response = await client.post(
        "/v1/chat/completions", json={"model": "echo", "messages": CHAT, "stream": True}
    )
    events = await sse_events(response)
    pieces = [
        e["choices"][0]["delta"].get("content") for e in events if e != "[DONE]" and e["choices"]
    ]
    assert "".join(p or "" for p in pieces) == "hello there friend"
    assert len([p for p in pieces if p]) == 3  # token by token, not one buffered piece

    status, body = await post(client, "/v1/completions", {"model": "echo", "prompt": "one two"})
    assert status == 200 and body["choices"][0]["text"] == "one two", body

    status, body = await post(client, "/v1/embeddings", {"model": "far-embed", "input": ["a", "b"]})
    assert status == 200, body
    assert len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 8

    status, body = await post(
        client, "/v1/messages", {"model": "echo", "max_tokens": 20, "messages": CHAT}
    )
    assert status == 200 and body["content"][0]["text"] == "hello there friend", body

    status, body = await post(client, "/v1/responses", {"model": "echo", "input": "hi you"})
    assert status == 200 and body["output"][0]["content"][0]["text"] == "hi you", body

    status, body = await post(client, "/api/v1/chat", {"model": "echo", "input": "hi you"})
    assert status == 200 and body["output"][-1]["content"] == "hi you", body

    status, body = await post(
        client, "/api/v0/chat/completions", {"model": "echo", "messages": CHAT}
    )
    assert status == 200 and body["model_info"]["format"] == "remote", body

    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    status, body = await post(
        client, "/v1/chat/completions", {"model": "toolsmith", "messages": CHAT, "tools": [weather]}
    )
    assert status == 200, body
    call = body["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and '"Paris"' in call["arguments"]


async def test_upstream_key_is_sent_but_never_shown_or_logged(
    client: Client,
    front: Daemon,
    upstream_url: str,
    upstream_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = admin_headers(front)
    response = await client.post(
        "/api/admin/upstreams",
        json={"name": "up", "base_url": upstream_url, "api_key": upstream_key},
        headers=headers,
    )
    assert response.status == 200, await response.text()
    listing = await (await client.get("/api/admin/upstreams", headers=headers)).text()
    assert upstream_key not in listing and '"api_key_set": true' in listing
    status, body = await post(client, "/v1/chat/completions", {"model": "echo", "messages": CHAT})
    assert status == 200, body
    assert upstream_key not in caplog.text
    # Kept as our own keys are: in a file only its owner can read.
    assert (front.paths.state_dir / "upstreams.json").stat().st_mode & 0o777 == 0o600


async def test_a_wrong_key_is_a_502_naming_the_upstream(
    client: Client, front: Daemon, upstream_url: str
) -> None:
    await add(front, "up", upstream_url, api_key="wrong")
    front.core.upstreams.get("up").models = {"echo": "echo"}  # type: ignore[union-attr]
    status, body = await post(client, "/v1/chat/completions", {"model": "echo", "messages": CHAT})
    assert status == 503, body
    assert "'up'" in body["error"]["message"] and "API key" in body["error"]["message"]


async def test_only_admin_callers_manage_upstreams(
    client: Client, front: Daemon, upstream_url: str
) -> None:
    body = {"name": "up", "base_url": upstream_url}
    assert (await client.post("/api/admin/upstreams", json=body)).status in (401, 403)
    _, inference = front.keys.create(None, "inference")
    response = await client.post(
        "/api/admin/upstreams", json=body, headers={"Authorization": f"Bearer {inference}"}
    )
    assert response.status == 403
    assert front.core.upstreams.upstreams() == []


async def test_spill_over_when_the_local_queue_is_full(
    aiohttp_client: Any, tmp_path: Path, upstream_url: str, upstream_key: str
) -> None:
    async with running_daemon(tmp_path / "spill", default_parallel=1, max_queue=0) as front:
        client = await aiohttp_client(front.app)
        await add(front, "up", upstream_url, api_key=upstream_key)
        front.core.upstreams.store.set_policy("endless", "spill_over")
        registry = front.core.metrics.registry
        local = await client.post(
            "/v1/chat/completions", json={"model": "endless", "messages": CHAT, "stream": True}
        )
        assert local.status == 200
        await local.content.readline()  # the local instance is busy from here on
        status, body = await post(
            client,
            "/v1/chat/completions",
            {"model": "endless", "messages": CHAT, "max_tokens": 3},
        )
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 3
        assert registry.get_sample_value("lmsd_upstream_requests_total", {"upstream": "up"}) == 1
        # local_only: the same request is a 503 from the full local queue instead
        front.core.upstreams.store.set_policy("endless", "local_only")
        status, body = await post(
            client, "/v1/chat/completions", {"model": "endless", "messages": CHAT, "max_tokens": 3}
        )
        assert status == 503 and body["error"]["code"] == "server_busy", body
        local.close()
