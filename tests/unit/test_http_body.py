"""Request bodies: malformed JSON is a 400, an oversized body a 413, both in OpenAI shape."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.http.errors import error_middleware, read_json_object


async def echo(request: web.Request) -> web.Response:
    return web.json_response(await read_json_object(request))


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    app = web.Application(client_max_size=1024, middlewares=[error_middleware])
    app.router.add_post("/echo", echo)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "empty")],
)
async def test_bad_bodies_are_400(client: TestClient[Any, Any], body: bytes, message: str) -> None:
    response = await client.post("/echo", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    payload = await response.json()
    assert payload["error"]["type"] == "invalid_request_error"
    assert message in payload["error"]["message"]


async def test_oversized_body_is_413(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", data=b'{"a": "' + b"x" * 4096 + b'"}')
    assert response.status == 413
    payload = await response.json()
    assert payload["error"]["code"] == "payload_too_large"


async def test_good_body_round_trips(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", json={"a": 1})
    assert (response.status, await response.json()) == (200, {"a": 1})
