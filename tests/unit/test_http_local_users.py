"""Another user of the machine, in process: the aiohttp test client is a TCP client with no
key, like any local process that connects to 127.0.0.1. Nothing that reveals the owner's
data or changes the daemon's state answers it; inference stays open until
`require_api_key`; the Unix socket (the owner's `lms`) still gets everything."""

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.http.routes import ACCESS, Access
from daemon.instance import LoadRequest
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

NEEDS_ADMIN = "needs the daemon's Unix socket (the `lms` CLI on this machine) or an admin API key"

# (method, path, body) of every route that reveals the owner's data or changes state.
CLOSED: list[tuple[str, str, Any]] = [
    ("GET", "/api/admin/log/stream?source=model", None),
    ("GET", "/api/admin/instances", None),
    ("GET", "/api/admin/models", None),
    ("GET", "/api/admin/models/match?q=echo", None),
    ("POST", "/api/v1/models/load", {"model": "echo", "context_length": 256}),
    ("POST", "/api/v1/models/unload", {"instance_id": "echo"}),
    ("GET", "/api/admin/config", None),
]
CHAT_PATH = "/v1/chat/completions"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def instances(daemon: Daemon) -> list[str]:
    return [i.identifier for i in daemon.core.manager.instances()]


async def call(
    client: Client, method: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with client.request(method, path, json=body, headers=headers) as response:
        if response.content_type == "application/x-ndjson":
            first = await response.content.readline()  # subscribed; the stream goes on
            return response.status, first
        return response.status, await response.json()


@pytest.mark.parametrize(("method", "path", "body"), CLOSED)
async def test_a_local_user_without_a_key_gets_403_naming_the_route(
    client: Client, daemon: Daemon, method: str, path: str, body: Any
) -> None:
    await daemon.core.manager.load("echo", LoadRequest(context_length=256))  # the owner's model
    status, reply = await call(client, method, path, body)
    assert status == 403, reply
    message = reply["error"]["message"]
    assert message.startswith(f"{method} {path.split('?')[0]} ") and NEEDS_ADMIN in message
    assert reply["error"]["type"] == "permission_error"
    _, inference = daemon.keys.create("app", "inference")
    status, reply = await call(client, method, path, body, bearer(inference))
    assert status == 403 and reply["error"]["message"].endswith("this key is inference-scoped")
    assert instances(daemon) == ["echo"], "nothing was loaded or unloaded"


@pytest.mark.parametrize(("method", "path", "body"), CLOSED)
async def test_an_admin_key_gets_through(
    client: Client, daemon: Daemon, method: str, path: str, body: Any
) -> None:
    if path.endswith("/unload"):
        await daemon.core.manager.load("echo", LoadRequest(context_length=256))
    _, admin = daemon.keys.create("ops", "admin")
    status, reply = await call(client, method, path, body, bearer(admin))
    assert status == 200, reply


async def test_a_wrong_key_on_an_admin_route_is_401(client: Client) -> None:
    status, reply = await call(client, "GET", "/api/admin/instances", None, bearer("lms-nope"))
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"


async def test_what_a_local_user_does_not_see_in_the_stream(client: Client, daemon: Daemon) -> None:
    """The owner's prompt goes through while another user tries to watch: they get a 403
    and not one line of it."""
    async with client.get("/api/admin/log/stream", params={"source": "model"}) as spy:
        assert spy.status == 403
        secret = {**CHAT, "messages": [{"role": "user", "content": "owner-secret-7f3"}]}
        status, _ = await call(client, "POST", CHAT_PATH, secret)
        assert status == 200
        leaked = await spy.read()
    assert (
        b"owner-secret" not in leaked and json.loads(leaked)["error"]["type"] == "permission_error"
    )


async def test_inference_and_its_listings_stay_open_on_loopback(
    client: Client, daemon: Daemon
) -> None:
    daemon.keys.create("app", "inference")  # keys existing on loopback change nothing
    for path in ("/v1/models", "/v1/models/echo", "/api/v0/models", "/api/v1/models"):
        assert (await call(client, "GET", path, None))[0] == 200, path
    assert (await call(client, "GET", "/api/admin/status", None))[0] == 200
    status, reply = await call(client, "POST", CHAT_PATH, CHAT)
    assert status == 200 and reply["object"] == "chat.completion"


async def test_require_api_key_closes_inference(aiohttp_client: Any, tmp_path: Path) -> None:
    async with running_daemon(tmp_path, require_api_key=True) as daemon:
        client: Client = await aiohttp_client(daemon.app)
        _, inference = daemon.keys.create("app", "inference")
        for method, path, body in [("GET", "/v1/models", None), ("POST", CHAT_PATH, CHAT)]:
            status, reply = await call(client, method, path, body)
            assert status == 401 and reply["error"]["code"] == "invalid_api_key", path
            assert (await call(client, method, path, body, bearer(inference)))[0] == 200
        status, reply = await call(client, "GET", "/api/admin/instances", None)
        assert status == 401 and NEEDS_ADMIN in reply["error"]["message"]
        status, _ = await call(client, "GET", "/api/admin/instances", None, bearer(inference))
        assert status == 403


async def test_metrics_need_a_key_of_any_scope(aiohttp_client: Any, tmp_path: Path) -> None:
    async with running_daemon(tmp_path, metrics=True) as daemon:
        client: Client = await aiohttp_client(daemon.app)
        async with client.get("/metrics") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "GET /metrics needs an API key" in (await response.json())["error"]["message"]
        _, inference = daemon.keys.create("scraper", "inference")
        async with client.get("/metrics", headers=bearer(inference)) as response:
            assert response.status == 200
            assert "lmsd_loaded_instances" in await response.text()


async def test_the_unix_socket_needs_no_key(daemon: Daemon) -> None:
    """The owner's channel: the same app on a Unix socket answers every closed route."""
    runner = web.AppRunner(daemon.app, handler_cancellation=True)  # as the daemon runs it
    await runner.setup()
    with tempfile.TemporaryDirectory(prefix="lms-") as folder:  # a short path for the socket
        socket_path = str(Path(folder) / "lmsd.sock")
        await web.UnixSite(runner, socket_path).start()
        try:
            connector = aiohttp.UnixConnector(path=socket_path)
            async with aiohttp.ClientSession(connector=connector) as session:
                for method, path, body in CLOSED:
                    async with session.request(
                        method, f"http://localhost{path}", json=body
                    ) as response:
                        assert response.status == 200, (path, await response.text())
        finally:
            await runner.cleanup()
    assert instances(daemon) == []


def test_every_admin_route_but_status_is_closed_over_tcp(daemon: Daemon) -> None:
    """The rule, over the whole table: `/api/admin/*` (but the status `lms status --host`
    needs), LM Studio's load/unload and the metrics always need a key over TCP."""
    for route, access in daemon.app[ACCESS].items():
        path = route.resource.canonical
        if path == "/api/admin/status":
            assert access is Access.INFERENCE
        elif path.startswith("/api/admin/") or path.startswith("/api/v1/models/"):
            assert access in (Access.ADMIN, Access.LOCAL), path
        elif path == "/metrics":
            assert access is Access.KEY
