"""Request bodies: malformed JSON is a 400, an oversized body a 413, both in OpenAI shape."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.compat.errors import ErrorInfo
from daemon.http.errors import error_middleware, read_json_object
from daemon.http.routes import INFERENCE, Route, register

JSON = {"Content-Type": "application/json"}


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
    response = await client.post("/echo", data=b'{"a": "' + b"x" * 4096 + b'"}', headers=JSON)
    assert response.status == 413
    payload = await response.json()
    assert payload["error"]["code"] == "payload_too_large"


async def test_good_body_round_trips(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", json={"a": 1})
    assert (response.status, await response.json()) == (200, {"a": 1})


def plain_shape(error: ErrorInfo) -> dict[str, Any]:
    return {"kind": "error", "status": error.status, "text": error.message}


async def test_a_route_writes_errors_in_its_surface_s_shape(aiohttp_client: Any) -> None:
    app = web.Application(client_max_size=1024, middlewares=[error_middleware])
    register(
        app,
        [
            Route("POST", "/plain", echo, INFERENCE, errors=plain_shape),
            Route("POST", "/openai", echo, INFERENCE),
        ],
    )
    client = await aiohttp_client(app)
    response = await client.post("/plain", data=b"{not json", headers=JSON)
    assert response.status == 400
    assert (await response.json())["kind"] == "error"
    response = await client.post("/plain", data=b'{"a": "' + b"x" * 4096 + b'"}', headers=JSON)
    assert (response.status, (await response.json())["status"]) == (413, 413)
    response = await client.post("/openai", data=b"{not json", headers=JSON)
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    response = await client.get("/nope")  # unknown routes answer in OpenAI's shape
    assert (await response.json())["error"]["code"] == "unknown_route"
