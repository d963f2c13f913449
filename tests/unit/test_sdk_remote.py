"""Remote models over LM Studio's SDK protocol (daemon/sdk/remote.py), in process: an
upstream daemon of ours (fake engine) on aiohttp's loopback test server, and a front
daemon whose SDK connections list its models, give handles to them and send their
predictions and embeddings upstream through the router."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.remote.config import upstream_from_dict
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon
from tests.unit.test_sdk import Sdk, chat

UPSTREAM_MODELS = ["echo", "endless", "text-embedding-embedder=far-embed"]


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path / "up", require_api_key=True) as daemon:
        yield daemon


@pytest.fixture
async def upstream_url(aiohttp_server: Any, upstream: Daemon) -> str:
    server = await aiohttp_server(upstream.app)
    return str(server.make_url("")).rstrip("/")


async def add_upstream(front: Daemon, upstream: Daemon, url: str) -> None:
    key = upstream.keys.create(None, "inference")[1]
    config = {"name": "up", "base_url": url, "api_key": key, "models": UPSTREAM_MODELS}
    await front.core.upstreams.add(upstream_from_dict(config))


@pytest.fixture
async def front(tmp_path: Path, upstream: Daemon, upstream_url: str) -> AsyncIterator[Daemon]:
    """A daemon with no models of its own: everything it serves is remote."""
    empty = tmp_path / "front-models"
    empty.mkdir()
    async with running_daemon(tmp_path / "front", models_dirs=[str(empty)]) as daemon:
        await add_upstream(daemon, upstream, upstream_url)
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, front: Daemon) -> Client:
    return await aiohttp_client(front.app)  # type: ignore[no-any-return]


def upstream_requests(front: Daemon) -> float:
    registry = front.core.metrics.registry
    return registry.get_sample_value("lmsd_upstream_requests_total", {"upstream": "up"}) or 0.0


def query(identifier: str) -> dict[str, Any]:
    return {"type": "query", "query": {"identifier": identifier}}


async def test_remote_models_in_the_sdk_listings(client: Client) -> None:
    system = await Sdk.connect(client, "system")
    listing = {m["modelKey"]: m for m in (await system.rpc("listDownloadedModels"))["result"]}
    assert sorted(listing) == ["echo", "endless", "far-embed"]
    echo = listing["echo"]
    assert echo["type"] == "llm" and echo["deviceIdentifier"] == "up" and echo["remote"] == ["up"]
    assert echo["format"] == "safetensors"  # the SDKs accept file formats only
    assert listing["far-embed"]["type"] == "embedding"
    llm = await Sdk.connect(client, "llm")
    loaded = (await llm.rpc("listLoaded"))["result"]
    assert [(m["identifier"], m["instanceReference"]) for m in loaded] == [
        ("echo", "remote:echo"),
        ("endless", "remote:endless"),
    ]
    assert all(m["deviceIdentifier"] == "up" and m["contextLength"] == 0 for m in loaded)
    embedding = await Sdk.connect(client, "embedding")
    assert [m["identifier"] for m in (await embedding.rpc("listLoaded"))["result"]] == ["far-embed"]


async def test_get_or_load_gives_a_handle_whose_predictions_go_upstream(
    client: Client, front: Daemon, upstream: Daemon
) -> None:
    sdk = await Sdk.connect(client, "llm")
    messages, end = await sdk.channel("getOrLoad", {"identifier": "echo", "loadTtlMs": 60_000})
    assert end["type"] == "channelClose", end
    assert [m["type"] for m in messages] == ["alreadyLoaded"]
    info = messages[0]["info"]
    assert info["identifier"] == "echo" and info["deviceIdentifier"] == "up"
    assert front.core.manager.instances() == []  # nothing was loaded here
    messages, end = await sdk.channel("predict", chat("hello there friend"))
    assert end["type"] == "channelClose", end
    text = "".join(m["fragment"]["content"] for m in messages if m["type"] == "fragment")
    assert text == "hello there friend"  # the upstream's fake engine echoes
    assert len([m for m in messages if m["type"] == "fragment"]) == 3  # streamed, not buffered
    success = messages[-1]
    assert success["type"] == "success" and success["stats"]["predictedTokensCount"] == 3
    assert success["modelInfo"]["deviceIdentifier"] == "up"
    assert success["modelInfo"]["instanceReference"] == "remote:echo"
    assert upstream_requests(front) == 1
    assert [i.identifier for i in upstream.core.manager.instances()] == ["echo"]
    # By the handle's instance reference (the JS SDK's way), the same route.
    by_reference = chat("one two")
    by_reference["modelSpecifier"] = {
        "type": "instanceReference",
        "instanceReference": info["instanceReference"],
    }
    messages, end = await sdk.channel("predict", by_reference)
    assert end["type"] == "channelClose", end
    assert "".join(m["fragment"]["content"] for m in messages if m["type"] == "fragment") == (
        "one two"
    )
    assert upstream_requests(front) == 2
    spec = {"type": "instanceReference", "instanceReference": "remote:echo"}
    got = (await sdk.rpc("getModelInfo", {"specifier": spec, "throwIfNotFound": True}))["result"]
    assert got["identifier"] == "echo" and got["remote"] == ["up"]
    config = (await sdk.rpc("getLoadConfig", {"specifier": query("echo")}))["result"]
    assert config["fields"] == []  # nothing loaded here


async def test_cancel_stops_a_remote_prediction(client: Client, front: Daemon) -> None:
    sdk = await Sdk.connect(client, "llm")
    channel = await sdk.open("predict", chat("on and", "endless"))
    while True:  # the first fragment: the upstream is generating
        frame = await sdk.ws.receive_json()
        if frame.get("channelId") == channel and frame["message"]["type"] == "fragment":
            break
    await sdk.ws.send_json(
        {"type": "channelSend", "channelId": channel, "message": {"type": "cancel"}}
    )
    messages, end = await sdk.messages(channel)
    assert end["type"] == "channelClose", end
    assert messages[-1]["stats"]["stopReason"] == "userStopped"
    assert front.core.upstreams.get("up").in_flight == 0  # type: ignore[union-attr]


async def test_embed_string_goes_upstream(client: Client, front: Daemon) -> None:
    sdk = await Sdk.connect(client, "embedding")
    messages, _ = await sdk.channel("getOrLoad", {"identifier": "far-embed"})
    assert messages[0]["type"] == "alreadyLoaded", messages
    reply = await sdk.rpc("embedString", {"modelSpecifier": query("far-embed"), "inputString": "a"})
    assert reply["type"] == "rpcResult", reply
    assert len(reply["result"]["embedding"]) == 8
    assert upstream_requests(front) == 1


async def test_what_a_remote_model_cannot_do_here_is_a_clear_error(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    unload = await sdk.rpc("unloadModel", {"identifier": "echo"})
    assert unload["type"] == "rpcError"
    assert "remote model, served by upstream up" in unload["error"]["title"]
    assert "cannot be unloaded" in unload["error"]["title"]
    count = await sdk.rpc("countTokens", {"specifier": query("echo"), "inputString": "a b"})
    assert count["type"] == "rpcError" and "tokenizer" in count["error"]["title"]
    _, end = await sdk.channel("loadModel", {"modelKey": "echo", "identifier": "mine"})
    assert end["type"] == "channelError" and "cannot be loaded here" in end["error"]["title"]
    _, end = await sdk.channel("getOrLoad", {"identifier": "far-embed"})
    assert end["type"] == "channelError" and "embedding namespace" in end["error"]["title"]
    missing = await sdk.rpc("getModelInfo", {"specifier": query("nope"), "throwIfNotFound": True})
    assert missing["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"


async def test_a_local_copy_follows_the_routing_policy(
    aiohttp_client: Any, tmp_path: Path, upstream: Daemon, upstream_url: str
) -> None:
    """A key on disk here and upstream is listed once; the SDK gets the local model under
    prefer_local (a JIT load here) and the remote one under prefer_remote."""
    async with running_daemon(tmp_path / "both") as front:
        await add_upstream(front, upstream, upstream_url)
        client = await aiohttp_client(front.app)
        system = await Sdk.connect(client, "system")
        listing = (await system.rpc("listDownloadedModels"))["result"]
        echoes = [m for m in listing if m["modelKey"] == "echo"]
        assert len(echoes) == 1 and echoes[0]["format"] == "gguf"
        assert echoes[0]["remote"] == ["up"] and echoes[0]["deviceIdentifier"] is None
        sdk = await Sdk.connect(client, "llm")
        assert "echo" not in [m["identifier"] for m in (await sdk.rpc("listLoaded"))["result"]]
        front.core.upstreams.store.set_policy("echo", "prefer_remote")
        loaded = (await sdk.rpc("listLoaded"))["result"]
        assert [m["instanceReference"] for m in loaded if m["identifier"] == "echo"] == [
            "remote:echo"
        ]
        messages, _ = await sdk.channel("getOrLoad", {"identifier": "echo"})
        assert [m["type"] for m in messages] == ["alreadyLoaded"]
        assert front.core.manager.instances() == []
        front.core.upstreams.store.set_policy("echo", "prefer_local")
        messages, end = await sdk.channel("getOrLoad", {"identifier": "echo"})
        assert end["type"] == "channelClose" and messages[-1]["type"] == "loadSuccess", messages
        assert [i.identifier for i in front.core.manager.instances()] == ["echo"]
        messages, _ = await sdk.channel("predict", chat("a b c"))
        assert messages[-1]["modelInfo"]["format"] == "gguf"
        assert upstream_requests(front) == 0
