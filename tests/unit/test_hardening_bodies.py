"""Issue 12, items 5 and 2 (JSON content type): bodies that used to be 500s are 400s, a
JSON body needs a JSON Content-Type (415 otherwise), and `GET /openapi.json` documents
every registered route. In process, against the fake engine (tests/inprocess.py)."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.http.errors import MAX_JSON_DEPTH, error_middleware, read_json_object
from daemon.http.routes import ACCESS
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

JSON = {"Content-Type": "application/json"}
USER = [{"role": "user", "content": "hello"}]
# Each surface's chat route, a body that is good on it with `{text}` for the prompt, and
# where its error message lives.
ASK = '"messages": [{"role": "user", "content": "%s"}]'
SURFACES = [
    ("/v1/chat/completions", '{"model": "echo", ' + ASK + "}"),
    ("/api/v0/chat/completions", '{"model": "echo", ' + ASK + "}"),
    ("/v1/completions", '{"model": "echo", "prompt": "%s", "max_tokens": 2}'),
    ("/v1/embeddings", '{"model": "embedder", "input": "%s"}'),
    ("/v1/messages", '{"model": "echo", "max_tokens": 4, ' + ASK + "}"),
    ("/v1/messages/count_tokens", '{"model": "echo", ' + ASK + "}"),
    ("/v1/responses", '{"model": "echo", "input": "%s"}'),
    ("/api/v1/chat", '{"model": "echo", "input": "%s"}'),
]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


def message_of(answer: dict[str, Any]) -> str:
    return str(answer["error"]["message"])


# -- lone surrogates ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "template"), SURFACES)
async def test_a_lone_surrogate_is_a_400_on_every_surface(
    client: Client, path: str, template: str
) -> None:
    response = await client.post(path, data=(template % "a \\ud800 b").encode(), headers=JSON)
    answer = await response.json()
    assert response.status == 400, answer
    assert "lone UTF-16 surrogate (\\ud800)" in message_of(answer)
    # A surrogate pair is one character (U+1F600): good text, the request goes through.
    response = await client.post(path, data=(template % "\\ud83d\\ude00").encode(), headers=JSON)
    assert response.status == 200, await response.text()


async def test_a_lone_surrogate_in_a_key_or_deep_in_a_body_is_named(client: Client) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "\\udfff": 1}'
    response = await client.post("/v1/chat/completions", data=body, headers=JSON)
    assert response.status == 400
    assert "(\\udfff)" in message_of(await response.json())
    body = (
        b'{"model": "echo", "messages": [{"role": "user", "content": '
        b'[{"type": "text", "text": "x\\udc00"}]}]}'
    )
    response = await client.post("/v1/chat/completions", data=body, headers=JSON)
    answer = await response.json()
    assert response.status == 400
    assert answer["error"]["param"] == "messages[0].content[0].text"
    assert answer["error"]["code"] == "invalid_unicode"


# -- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [path for path, _ in SURFACES])
async def test_json_nested_100_000_deep_is_a_400(client: Client, path: str) -> None:
    body = b'{"model": "echo", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post(path, data=body, headers=JSON)
    assert response.status == 400
    assert "nested too deeply" in message_of(await response.json())


async def echo(request: web.Request) -> web.Response:
    return web.json_response(await read_json_object(request))


@pytest.fixture
async def echo_client(aiohttp_client: Any) -> Client:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/echo", echo)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def nested(levels: int) -> bytes:
    """A JSON object with `levels` objects and arrays, one inside the other."""
    return b'{"a": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


async def test_the_depth_limit_is_exact(echo_client: Client) -> None:
    response = await echo_client.post("/echo", data=nested(MAX_JSON_DEPTH), headers=JSON)
    assert response.status == 200
    for levels in (MAX_JSON_DEPTH + 1, 900):  # 900: json.loads itself copes, we refuse
        response = await echo_client.post("/echo", data=nested(levels), headers=JSON)
        answer = await response.json()
        assert response.status == 400 and answer["error"]["code"] == "json_too_deep"


# -- content type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/octet-stream", "application/jsonx"],
)  # fmt: skip
async def test_a_json_body_without_a_json_content_type_is_a_415(
    echo_client: Client, content_type: str | None
) -> None:
    # skip_auto_headers: aiohttp's client would otherwise send application/octet-stream.
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await echo_client.post(
        "/echo", data=b'{"a": 1}', headers=headers, skip_auto_headers=["Content-Type"]
    )
    answer = await response.json()
    assert response.status == 415, answer
    assert answer["error"]["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in message_of(answer)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON",
     "application/vnd.api+json", "application/merge-patch+json"],
)  # fmt: skip
async def test_json_content_types_are_accepted(echo_client: Client, content_type: str) -> None:
    response = await echo_client.post(
        "/echo", data=b'{"a": 1}', headers={"Content-Type": content_type}
    )
    assert (response.status, await response.json()) == (200, {"a": 1})


@pytest.mark.parametrize(("path", "template"), SURFACES)
async def test_every_json_route_of_the_daemon_wants_json(
    client: Client, path: str, template: str
) -> None:
    """What a web page can send without a preflight is refused before anything runs."""
    body = (template % "hi").encode()
    response = await client.post(path, data=body, headers={"Content-Type": "text/plain"})
    assert response.status == 415, await response.text()
    response = await client.post(path, data=body, headers=JSON)
    assert response.status == 200, await response.text()


# -- what the fuzz run found, and the cases the issue names ---------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "echo", "messages": [{"role": [None]}]},
         "messages[0].role"),
        ("/v1/chat/completions", {"model": "echo", "messages": [{"role": {}}]},
         "messages[0].role"),
        ("/v1/responses", {"model": "echo", "input": [{"type": "message", "role": []}]},
         "input[0].role"),
        ("/v1/messages", {"model": "echo", "max_tokens": 4, "messages": USER,
                          "tool_choice": {"type": []}}, None),
        ("/v1/chat/completions", {"model": "echo", "messages": USER, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": "f"}}, "tool_choice"),
        ("/v1/chat/completions", {"model": "echo", "messages": [
            *USER, {"role": "assistant", "tool_calls": 5}]}, "messages[1].tool_calls"),
    ],
)  # fmt: skip
async def test_malformed_fields_are_400s(
    client: Client, path: str, body: dict[str, Any], param: str | None
) -> None:
    response = await client.post(path, json=body)
    answer = await response.json()
    assert response.status == 400, answer
    if param is not None:
        assert answer["error"]["param"] == param


# -- the OpenAPI document -------------------------------------------------------------------


async def test_openapi_documents_every_registered_route(client: Client, daemon: Daemon) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    table = {
        (route.method, route.resource.canonical): access.value
        for route, access in daemon.app[ACCESS].items()
    }
    registered = {
        (route.method, route.resource.canonical)
        for route in daemon.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert registered == set(table)
    assert set(documented) == set(table)
    assert ("GET", "/openapi.json") in table
    for key, operation in documented.items():
        assert operation["x-lmsd-access"] == table[key]
    # Every POST route that takes a body says what it is; only these take none.
    bodiless = {("POST", "/api/admin/shutdown"), ("POST", "/api/admin/server/stop")}
    for key, operation in documented.items():
        if key[0] == "POST" and key not in bodiless:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["type"] == "object" and schema["properties"], key
    chat = documented[("POST", "/v1/chat/completions")]["requestBody"]["content"]
    assert chat["application/json"]["schema"]["required"] == ["model", "messages"]
    assert json.loads(json.dumps(document)) == document
