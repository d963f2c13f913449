"""Web pages on other origins (daemon/http/browsers.py), in process against the fake
engine: a request a browser marks as cross-site is refused unless its origin is allowed
by `cors`; requests without browser headers, the public routes and CORS preflights are
unaffected. The real browser is in tests/integration/test_browser.py."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.server import Daemon
from tests.inprocess import Client, admin_headers, running_daemon

EVIL = "http://127.0.0.1:8999"
GOOD = "http://127.0.0.1:8000"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
TEXT_PLAIN = {"Content-Type": "text/plain"}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path, cors=[GOOD]) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


def loaded(daemon: Daemon) -> list[str]:
    return sorted(i.identifier for i in daemon.core.manager.instances())


def generated(daemon: Daemon) -> float:
    """Tokens generated so far, as /metrics counts them."""
    value = daemon.core.metrics.registry.get_sample_value(
        "lmsd_generated_tokens_total", {"model": "echo"}
    )
    return value or 0.0


async def load_echo(client: Client, daemon: Daemon) -> None:
    response = await client.post(
        "/api/v1/models/load", json={"model": "echo"}, headers=admin_headers(daemon)
    )
    assert response.status == 200, await response.text()
    assert loaded(daemon) == ["echo"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": EVIL, "Sec-Fetch-Site": "same-site"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_a_page_on_another_origin_cannot_unload(
    client: Client, daemon: Daemon, headers: dict[str, str]
) -> None:
    await load_echo(client, daemon)
    # Even with an admin key (which a page cannot send without a preflight), so that only
    # the cross-origin check stands in the way.
    response = await client.post(
        "/api/v1/models/unload",
        data='{"instance_id": "echo"}',
        headers={**TEXT_PLAIN, **admin_headers(daemon), **headers},
    )
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["type"] == "permission_error"
    assert error["code"] == "cross_origin_refused"
    assert "cors" in error["message"]
    assert loaded(daemon) == ["echo"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/load",
        "/v1/chat/completions",
        "/api/v0/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/api/admin/shutdown",
        "/api/admin/config",
        "/v1/models",
        "/no/such/route",
    ],
)
async def test_every_non_public_route_refuses_a_foreign_page(client: Client, path: str) -> None:
    response = await client.post(path, json=CHAT, headers={"Origin": EVIL})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "cross_origin_refused"


async def test_the_refusal_has_the_route_s_error_shape(client: Client) -> None:
    headers = {"Sec-Fetch-Site": "cross-site"}
    response = await client.post("/v1/messages", json=CHAT, headers=headers)
    assert response.status == 403
    body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    response = await client.post("/api/v1/chat", json=CHAT, headers=headers)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "cross_origin_refused"


async def test_no_generation_is_counted_for_a_refused_page(client: Client, daemon: Daemon) -> None:
    await load_echo(client, daemon)
    response = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Origin": EVIL, "Sec-Fetch-Site": "same-site"}
    )
    assert response.status == 403
    assert loaded(daemon) == ["echo"]
    assert generated(daemon) == 0
    response = await client.post("/v1/chat/completions", json=CHAT)  # the same, from curl
    assert response.status == 200
    assert generated(daemon) > 0


async def test_an_allowed_origin_works(client: Client, daemon: Daemon) -> None:
    response = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Origin": GOOD, "Sec-Fetch-Site": "same-site"}
    )
    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == GOOD


@pytest.mark.parametrize(
    "headers",
    [{}, {"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-origin"}],
)
async def test_requests_without_a_foreign_page_are_unaffected(
    client: Client, daemon: Daemon, headers: dict[str, str]
) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status == 200, await response.text()
    await load_echo(client, daemon)


async def test_public_routes_and_preflights_are_unaffected(client: Client) -> None:
    for path in ("/lmstudio-greeting", "/health"):
        response = await client.get(path, headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
        assert response.status == 200
    preflight = {"Origin": GOOD, "Access-Control-Request-Method": "POST"}
    response = await client.options("/v1/chat/completions", headers=preflight)
    assert response.status == 204
