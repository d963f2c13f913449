"""LM Studio's SDK WebSocket protocol (daemon/sdk, daemon/http/sdk_routes.py): the pure
framing and translators, then every endpoint in process against the fake engine
(tests/inprocess.py) through aiohttp's `ws_connect`."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType

from daemon.engines.fake_impl import token_id
from daemon.errors import ModelNotFound
from daemon.sdk import protocol, translate
from daemon.server import Daemon
from tests.inprocess import Client, admin_headers, running_daemon

# -- pure ---------------------------------------------------------------------------------------


def test_frames_parse_and_refuse() -> None:
    call = protocol.parse_frame('{"type": "rpcCall", "endpoint": "listLoaded", "callId": 3}')
    assert call == protocol.RpcCall("listLoaded", 3, None)
    create = protocol.parse_frame(
        '{"type": "channelCreate", "endpoint": "predict", "channelId": 0,'
        ' "creationParameter": {"a": 1}}'
    )
    assert create == protocol.ChannelCreate("predict", 0, {"a": 1})
    for bad in (
        "nope",
        "[]",
        '{"type": "rpcCall", "endpoint": "x", "callId": -1}',
        '{"type": "rpcCall", "callId": 1}',
        '{"type": "whatever"}',
    ):
        with pytest.raises(protocol.FrameError):
            protocol.parse_frame(bad)
    hello = protocol.parse_hello(
        '{"authVersion": 1, "clientIdentifier": "a", "clientPasskey": "b", "apiToken": "k"}'
    )
    assert hello == protocol.Hello("a", "b", "k")
    with pytest.raises(protocol.FrameError):
        protocol.parse_hello('{"type": "rpcCall"}')


def test_model_not_found_is_the_sdk_code() -> None:
    error = protocol.error_of(ModelNotFound("no such model"))
    assert error["displayData"]["code"] == "generic.noModelMatchingQuery"
    assert error["title"] == "no such model"


def _stack(**fields: Any) -> dict[str, Any]:
    return {
        "layers": [
            {
                "layerName": "apiOverride",
                "config": {"fields": [{"key": k, "value": v} for k, v in fields.items()]},
            }
        ]
    }


def test_predict_request_maps_the_config_stack() -> None:
    parameter = {
        "modelSpecifier": {"type": "query", "query": {"identifier": "echo"}},
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "predictionConfigStack": _stack(
            **{
                "llm.prediction.maxPredictedTokens": {"checked": True, "value": 7},
                "llm.prediction.temperature": 0.1,
                "llm.prediction.topKSampling": 5,
                "llm.prediction.topPSampling": {"checked": True, "value": 0.5},
                "llm.prediction.minPSampling": {"checked": False, "value": 0.3},
                "llm.prediction.repeatPenalty": {"checked": True, "value": 1.2},
                "llm.prediction.stopStrings": ["END"],
                "llm.prediction.structured": {"type": "json", "jsonSchema": {"type": "object"}},
            }
        ),
    }
    request = translate.predict_request("echo", parameter, ttl=None)
    params = request.prediction.params
    assert (params.max_tokens, params.temperature, params.top_k) == (7, 0.1, 5)
    assert (params.top_p, params.min_p, params.repeat_penalty) == (0.5, 0.05, 1.2)
    assert params.stop == ["END"]
    assert request.prediction.structured == {"schema": {"type": "object"}}
    assert request.structured
    assert request.prediction.messages[0].text == "hi"


def test_completion_template_becomes_a_raw_prompt_and_tools_a_setup() -> None:
    template = {
        "type": "jinja",
        "jinjaPromptTemplate": {"template": translate.COMPLETION_TEMPLATE},
    }
    history = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Once"}]}]}
    request = translate.predict_request(
        "echo",
        {
            "history": history,
            "predictionConfigStack": _stack(**{"llm.prediction.promptTemplate": template}),
        },
        ttl=None,
    )
    assert request.prediction.prompt == "Once" and request.prediction.messages == ()
    tools = {"type": "toolArray", "tools": [{"type": "function", "function": {"name": "f"}}]}
    request = translate.predict_request(
        "echo",
        {"history": history, "predictionConfigStack": _stack(**{"llm.prediction.tools": tools})},
        ttl=None,
    )
    assert request.prediction.tools is not None and request.prediction.tools.names == ["f"]


def test_history_with_tool_calls_and_results() -> None:
    messages = translate.history_messages(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "toolCallRequest",
                            "toolCallRequest": {
                                "type": "function",
                                "id": "c1",
                                "name": "w",
                                "arguments": {"city": "Oslo"},
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "content": [{"type": "toolCallResult", "content": "sunny", "toolCallId": "c1"}],
                },
            ]
        }
    )
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls[0].name == "w"
    assert json.loads(messages[1].tool_calls[0].arguments) == {"city": "Oslo"}
    assert messages[2].tool_call_id == "c1" and messages[2].text == "sunny"


# -- in process ---------------------------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


class Sdk:
    """A minimal client of the protocol, as the SDKs speak it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    @classmethod
    async def connect(cls, client: Client, namespace: str, **kwargs: Any) -> "Sdk":
        ws = await client.ws_connect(f"/{namespace}", **kwargs)
        hello = {"authVersion": 1, "clientIdentifier": "t", "clientPasskey": "p"}
        await ws.send_json(hello)
        assert await ws.receive_json() == {"success": True}
        return cls(ws)

    async def rpc(self, endpoint: str, parameter: Any = None) -> dict[str, Any]:
        self.next_id += 1
        frame: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": self.next_id}
        if parameter is not None:
            frame["parameter"] = parameter
        await self.ws.send_json(frame)
        while True:
            reply = await self.ws.receive_json()
            if reply.get("callId") == self.next_id:
                return reply  # type: ignore[no-any-return]

    async def open(self, endpoint: str, parameter: Any) -> int:
        self.next_id += 1
        await self.ws.send_json(
            {
                "type": "channelCreate",
                "endpoint": endpoint,
                "channelId": self.next_id,
                "creationParameter": parameter,
            }
        )
        return self.next_id

    async def messages(self, channel_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The channel's messages until it closes, and its last frame."""
        out: list[dict[str, Any]] = []
        while True:
            frame = await asyncio.wait_for(self.ws.receive_json(), 30)
            if frame.get("channelId") != channel_id:
                continue
            if frame["type"] == "channelSend":
                out.append(frame["message"])
            else:
                return out, frame

    async def channel(
        self, endpoint: str, parameter: Any
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return await self.messages(await self.open(endpoint, parameter))


MAX_TOKENS = "llm.prediction.maxPredictedTokens"


def chat(text: str, model: str = "echo", config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "modelSpecifier": {"type": "query", "query": {"identifier": model}},
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
        "predictionConfigStack": _stack(**(config or {})),
    }


async def test_system_lists_downloaded_models_and_version(client: Client) -> None:
    sdk = await Sdk.connect(client, "system")
    listing = (await sdk.rpc("listDownloadedModels"))["result"]
    keys = {m["modelKey"]: m for m in listing}
    assert keys["echo"]["type"] == "llm"
    assert any(m["type"] == "embedding" for m in listing), sorted(keys)
    assert (await sdk.rpc("version"))["result"]["version"]


async def test_get_or_load_then_list_info_config_and_unload(client: Client, daemon: Daemon) -> None:
    sdk = await Sdk.connect(client, "llm")
    messages, end = await sdk.channel(
        "getOrLoad", {"identifier": "echo", "loadTtlMs": 120_000, "loadConfigStack": {"layers": []}}
    )
    assert end["type"] == "channelClose", end
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "startLoading" and kinds[-1] == "loadSuccess"
    info = messages[-1]["info"]
    assert info["identifier"] == "echo" and info["instanceReference"] and info["contextLength"]
    inst = next(i for i in daemon.core.manager.instances() if i.identifier == "echo")
    assert inst.origin == "jit" and inst.ttl == 120
    again, _ = await sdk.channel("getOrLoad", {"identifier": "echo"})
    assert [m["type"] for m in again] == ["alreadyLoaded"]
    loaded = (await sdk.rpc("listLoaded"))["result"]
    assert [m["identifier"] for m in loaded] == ["echo"]
    spec = {"type": "instanceReference", "instanceReference": info["instanceReference"]}
    got = (await sdk.rpc("getModelInfo", {"specifier": spec, "throwIfNotFound": True}))["result"]
    assert got["contextLength"] == info["contextLength"]
    config = (await sdk.rpc("getLoadConfig", {"specifier": spec}))["result"]
    assert {"key": "llm.load.contextLength", "value": info["contextLength"]} in config["fields"]
    count = await sdk.rpc("countTokens", {"specifier": spec, "inputString": "one two three"})
    assert count["result"]["tokenCount"] > 0
    history = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    formatted = await sdk.rpc("applyPromptTemplate", {"specifier": spec, "history": history})
    assert "hi" in formatted["result"]["formatted"]
    tokenize = await sdk.rpc("tokenize", {"specifier": spec, "inputString": "one two three"})
    assert tokenize["result"]["tokens"] == [token_id(w) for w in ("one ", "two ", "three")]
    assert len(tokenize["result"]["tokens"]) == count["result"]["tokenCount"]
    no_text = await sdk.rpc("tokenize", {"specifier": spec})
    assert no_text["type"] == "rpcError" and "inputString" in no_text["error"]["title"]
    assert (await sdk.rpc("unloadModel", {"identifier": "echo"}))["type"] == "rpcResult"
    assert (await sdk.rpc("listLoaded"))["result"] == []
    # The embedding namespace lists only embedding models.
    embedding = await Sdk.connect(client, "embedding")
    assert (await embedding.rpc("listLoaded"))["result"] == []


async def test_unknown_model_is_no_model_matching_query(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    _, end = await sdk.channel("getOrLoad", {"identifier": "no-such-model"})
    assert end["type"] == "channelError"
    assert end["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
    spec = {"type": "query", "query": {"identifier": "echo"}}
    info = await sdk.rpc("getModelInfo", {"specifier": spec, "throwIfNotFound": True})
    assert info["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"


async def test_predict_streams_fragments_and_success(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    messages, end = await sdk.channel(
        "predict",
        chat(
            "one two three four five six seven", config={MAX_TOKENS: {"checked": True, "value": 3}}
        ),
    )
    assert end["type"] == "channelClose", end
    fragments = [m for m in messages if m["type"] == "fragment"]
    assert fragments and all(f["fragment"]["reasoningType"] == "none" for f in fragments)
    success = messages[-1]
    assert success["type"] == "success"
    assert success["stats"]["stopReason"] == "maxPredictedTokensReached"
    assert success["stats"]["predictedTokensCount"] == 3
    assert success["modelInfo"]["modelKey"] == "echo"
    assert {"layers"} != set(success["predictionConfig"])
    assert messages[0]["type"] == "promptProcessingProgress"


async def test_predict_tool_call_and_reasoning(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    tools = {
        "type": "toolArray",
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
    }
    messages, _ = await sdk.channel(
        "predict", chat("weather?", "toolsmith", {"llm.prediction.tools": tools})
    )
    kinds = [m["type"] for m in messages]
    assert "toolCallGenerationStart" in kinds
    end = next(m for m in messages if m["type"] == "toolCallGenerationEnd")
    assert end["toolCallRequest"]["name"] == "get_weather"
    assert end["toolCallRequest"]["arguments"] == {"city": "Paris"}
    assert messages[-1]["stats"]["stopReason"] == "toolCalls"
    messages, _ = await sdk.channel("predict", chat("2+2?", "thinker"))
    reasoning = [
        m
        for m in messages
        if m["type"] == "fragment" and m["fragment"]["reasoningType"] == "reasoning"
    ]
    assert reasoning


async def test_cancel_stops_the_prediction_with_user_stopped(
    client: Client, daemon: Daemon
) -> None:
    sdk = await Sdk.connect(client, "llm")
    channel_id = await sdk.open("predict", chat("go", "endless"))
    while True:  # wait for the first fragment
        frame = await sdk.ws.receive_json()
        if frame.get("message", {}).get("type") == "fragment":
            break
    await sdk.ws.send_json(
        {"type": "channelSend", "channelId": channel_id, "message": {"type": "cancel"}}
    )
    messages, end = await sdk.messages(channel_id)
    assert end["type"] == "channelClose"
    assert messages[-1]["type"] == "success"
    assert messages[-1]["stats"]["stopReason"] == "userStopped"
    inst = next(i for i in daemon.core.manager.instances() if i.identifier == "endless")
    for _ in range(200):
        if inst.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert inst.in_flight == 0
    # The connection still serves.
    assert (await sdk.rpc("listLoaded"))["type"] == "rpcResult"


async def test_disconnect_mid_prediction_stops_it(client: Client, daemon: Daemon) -> None:
    sdk = await Sdk.connect(client, "llm")
    await sdk.open("predict", chat("go", "endless"))
    while True:
        frame = await sdk.ws.receive_json()
        if frame.get("message", {}).get("type") == "fragment":
            break
    await sdk.ws.close()
    inst = next(i for i in daemon.core.manager.instances() if i.identifier == "endless")
    for _ in range(500):
        if inst.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert inst.in_flight == 0
    again = await Sdk.connect(client, "llm")
    assert (await again.rpc("listLoaded"))["type"] == "rpcResult"


async def test_malformed_frames_and_unknown_endpoints_answer(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    await sdk.ws.send_str("{not json")
    warning = await sdk.ws.receive_json()
    assert warning["type"] == "communicationWarning" and "malformed" in warning["warning"]
    await sdk.ws.send_json({"type": "rpcCall", "endpoint": "frobnicate", "callId": 99})
    error = await sdk.ws.receive_json()
    assert error["type"] == "rpcError" and "frobnicate" in error["error"]["title"]
    _, end = await sdk.channel("frobnicate", {})
    assert end["type"] == "channelError" and "frobnicate" in end["error"]["title"]
    _, end = await sdk.channel("predict", {"history": "nope"})
    assert end["type"] == "channelError"
    for namespace in ("repository", "diagnostics", "plugins", "files"):
        other = await Sdk.connect(client, namespace)
        reply = await other.rpc("searchModels", {})
        assert reply["type"] == "rpcError"
    files = await Sdk.connect(client, "files")
    upload = await files.rpc("uploadFileBase64", {"name": "a.png", "contentBase64": "AA=="})
    assert upload["type"] == "rpcError" and "image" in upload["error"]["title"]
    assert (await sdk.rpc("listLoaded"))["type"] == "rpcResult"


async def test_too_many_open_channels_are_refused(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    for _ in range(protocol.MAX_OPEN):
        await sdk.open("predict", chat("go", "endless"))
    reply = await sdk.rpc("listLoaded")
    assert reply["type"] == "rpcError" and "too many" in reply["error"]["title"]


async def test_embed_string(client: Client) -> None:
    sdk = await Sdk.connect(client, "embedding")
    spec = {"type": "query", "query": {"identifier": "embedder"}}
    reply = await sdk.rpc("embedString", {"modelSpecifier": spec, "inputString": "hello"})
    assert len(reply["result"]["embedding"]) == 8


async def test_a_bad_handshake_is_refused(client: Client) -> None:
    ws = await client.ws_connect("/llm")
    await ws.send_json({"type": "rpcCall"})
    reply = await ws.receive_json()
    assert reply["success"] is False and reply["error"]["title"]


async def test_cross_site_pages_cannot_open_the_socket(client: Client) -> None:
    response = await client.get(
        "/llm",
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status == 403
    assert "evil.example" in (await response.json())["error"]["message"]


async def test_keys_required_and_sdk_load_access(tmp_path: Path, aiohttp_client: Any) -> None:
    async with running_daemon(tmp_path, require_api_key=True) as daemon:
        client = await aiohttp_client(daemon.app)
        ws = await client.ws_connect("/llm")
        await ws.send_json({"authVersion": 1, "clientIdentifier": "a", "clientPasskey": "b"})
        reply = await ws.receive_json()
        assert reply["success"] is False and "API key" in reply["error"]["title"]
        _, inference = daemon.keys.create(None, "inference")
        ws = await client.ws_connect("/llm")
        await ws.send_json(
            {"authVersion": 1, "clientIdentifier": "a", "clientPasskey": "b", "apiToken": inference}
        )
        assert (await ws.receive_json())["success"] is True
        sdk = Sdk(ws)
        # Without an admin key, loadModel is a JIT load, and pinned models stay pinned.
        _, end = await sdk.channel("loadModel", {"modelKey": "echo", "identifier": "mine"})
        assert end["type"] == "channelClose", end
        inst = next(i for i in daemon.core.manager.instances() if i.identifier == "mine")
        assert inst.origin == "jit"
        await daemon.core.manager.load("tiny")
        refused = await sdk.rpc("unloadModel", {"identifier": "tiny"})
        assert refused["type"] == "rpcError" and "admin" in refused["error"]["title"]
        assert (await sdk.rpc("unloadModel", {"identifier": "mine"}))["type"] == "rpcResult"
        # An admin key (here in the upgrade's header) loads manually and unloads anything.
        admin = await Sdk.connect(client, "llm", headers=admin_headers(daemon))
        _, end = await admin.channel("loadModel", {"modelKey": "echo", "ttlMs": 60_000})
        inst = next(i for i in daemon.core.manager.instances() if i.identifier == "echo")
        assert inst.origin == "manual" and inst.ttl == 60
        assert (await admin.rpc("unloadModel", {"identifier": "tiny"}))["type"] == "rpcResult"


async def test_a_frame_over_the_limit_closes_only_that_connection(client: Client) -> None:
    sdk = await Sdk.connect(client, "llm")
    try:  # the server closes the connection (1009) as soon as it sees the frame's size
        await sdk.ws.send_str("x" * (protocol.MAX_FRAME_BYTES + 1))
        message = await sdk.ws.receive()
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    except ConnectionError:
        pass
    again = await Sdk.connect(client, "llm")
    assert (await again.rpc("listLoaded"))["type"] == "rpcResult"


async def test_discovery_listens_only_while_lm_studio_ports_are_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from aiohttp import ClientSession, web

    from daemon.http import sdk_discovery

    probes = [socket.socket() for _ in range(2)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = tuple(p.getsockname()[1] for p in probes)
    for probe in probes:
        probe.close()
    monkeypatch.setattr(sdk_discovery, "LMSTUDIO_SDK_PORTS", ports)

    async def greeting(request: web.Request) -> web.Response:
        return web.json_response({"lmstudio": True})

    app = web.Application()
    app.router.add_get("/lmstudio-greeting", greeting)
    runner = web.AppRunner(app)
    await runner.setup()
    discovery = sdk_discovery.SdkDiscovery()
    try:
        await discovery.start(runner, enabled=False, max_connections=8)
        assert discovery.port is None
        await discovery.start(runner, enabled=True, max_connections=8)
        assert discovery.port == ports[0]
        url = f"http://127.0.0.1:{ports[0]}/lmstudio-greeting"
        async with ClientSession() as session, session.get(url) as reply:
            assert await reply.json() == {"lmstudio": True}
        await discovery.stop()
        assert discovery.port is None
        # Another server (LM Studio) on any of its ports: the daemon stays off them all.
        with socket.socket() as other:
            other.bind(("127.0.0.1", ports[1]))
            other.listen()
            await discovery.start(runner, enabled=True, max_connections=8)
            assert discovery.port is None
    finally:
        await discovery.stop()
        await runner.cleanup()


def _slow_model(root: Path) -> None:
    from daemon.engines.fake_impl import GGUF_OPTIONS_KEY
    from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, write_gguf

    write_gguf(
        root / "models" / "test" / "slow" / "slow-Q4_K_M.gguf",
        arch="llama",
        name="slow",
        chat_template=PLAIN_TEMPLATE,
        context_length=4096,
        extra={GGUF_OPTIONS_KEY: json.dumps({"load_delay": 0.3})},
    )


async def test_load_model_reports_progress_and_a_cancel_abandons_it(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    _slow_model(tmp_path)
    async with running_daemon(tmp_path) as daemon:
        client = await aiohttp_client(daemon.app)
        sdk = await Sdk.connect(client, "llm")
        messages, end = await sdk.channel("loadModel", {"modelKey": "slow"})
        assert end["type"] == "channelClose", end
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "resolved" and kinds[-1] == "success"
        progress = [m["progress"] for m in messages if m["type"] == "progress"]
        assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 1.0
        assert messages[-1]["info"]["identifier"] == "slow"
        await daemon.core.manager.unload("slow")
        # A cancel while it loads: a channel error, and the load is abandoned.
        channel_id = await sdk.open("getOrLoad", {"identifier": "slow"})
        while True:
            frame = await sdk.ws.receive_json()
            if frame.get("message", {}).get("type") == "loadProgress":
                break
        cancel = {"type": "channelSend", "channelId": channel_id, "message": {"type": "cancel"}}
        await sdk.ws.send_json(cancel)
        _, end = await sdk.messages(channel_id)
        assert end["type"] == "channelError" and "cancelled" in end["error"]["title"]
        for _ in range(300):
            if not daemon.core.manager.instances():
                break
            await asyncio.sleep(0.01)
        assert daemon.core.manager.instances() == []


async def test_an_llm_cannot_load_through_the_embedding_namespace(client: Client) -> None:
    sdk = await Sdk.connect(client, "embedding")
    _, end = await sdk.channel("getOrLoad", {"identifier": "echo"})
    assert end["type"] == "channelError" and "llm namespace" in end["error"]["title"]
    spec = {"type": "query", "query": {"identifier": "embedder"}}
    llm = await Sdk.connect(client, "llm")
    _, end = await llm.channel("predict", {**chat("hi"), "modelSpecifier": spec})
    assert end["type"] == "channelError" and "embedding model" in end["error"]["title"]


async def test_get_or_load_says_which_jit_model_it_evicts(client: Client, daemon: Daemon) -> None:
    sdk = await Sdk.connect(client, "llm")
    _, end = await sdk.channel("getOrLoad", {"identifier": "echo"})
    assert end["type"] == "channelClose"
    messages, end = await sdk.channel("getOrLoad", {"identifier": "thinker"})
    assert end["type"] == "channelClose"
    evicted = [m["info"]["identifier"] for m in messages if m["type"] == "unloadingOtherJITModel"]
    assert evicted == ["echo"]
    assert [i.identifier for i in daemon.core.manager.instances()] == ["thinker"]
