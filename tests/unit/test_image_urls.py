"""Image URLs (docs/vision.md, "Image URLs"): refused unless the `image_urls` setting is on;
when on, fetched by the daemon from a real local web server (aiohttp's test server on
127.0.0.1) within the size and time limits, redirects followed and checked again, and
non-public destinations refused. The routes run in process against the fake engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError, InvalidRequest, PayloadTooLarge
from daemon.http.image_fetch import IPAddress, WebImageFetcher, address_allowed
from daemon.prediction.image_urls import FetchLimits, resolve_image_urls
from daemon.prediction.types import ImagePart, ImageUrl, Message, Prediction, TextPart
from daemon.server import Daemon
from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, write_gguf, write_mmproj
from tests.fixtures.vision import png_bytes
from tests.inprocess import Client, running_daemon

PNG = png_bytes(1)
LIMIT = 50_000  # image_urls_max_bytes in these tests
ANTHROPIC = {"anthropic-version": "2023-06-01"}
# Headers a fetch may send: nothing of the client's request (keys, cookies) goes on.
OWN_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection"}


@dataclass
class ImageHost:
    """The local web server the daemon fetches from, and what it was asked."""

    server: TestServer
    seen: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def host(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[ImageHost]:
    routes = web.RouteTableDef()
    box: list[ImageHost] = []

    def served(request: web.Request) -> None:
        box[0].seen.append({k.lower(): v for k, v in request.headers.items()})

    @routes.get("/cat.png")
    async def png(request: web.Request) -> web.Response:
        served(request)
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/cat.bin")
    async def octets(request: web.Request) -> web.Response:
        served(request)
        return web.Response(body=PNG, content_type="application/octet-stream")

    @routes.get("/broken.png")
    async def broken(request: web.Request) -> web.Response:
        return web.Response(body=PNG[:40], content_type="image/png")

    @routes.get("/page.html")
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    @routes.get("/declared-big.png")
    async def declared_big(request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * (LIMIT + 1), content_type="image/png")

    @routes.get("/endless.png")
    async def endless(request: web.Request) -> web.StreamResponse:
        # No Content-Length: only counting the streamed bytes can stop it.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):
                await response.write(b"\0" * 8192)
        return response

    @routes.get("/slow.png")
    async def slow(request: web.Request) -> web.Response:
        served(request)
        await box[0].release.wait()  # set when the test ends
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/to-cat")
    async def to_cat(request: web.Request) -> web.Response:
        raise web.HTTPFound("/cat.png")  # relative: resolved against this URL

    @routes.get("/to-metadata")
    async def to_metadata(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    @routes.get("/to-other-loopback")
    async def to_other_loopback(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.2:{request.url.port}/cat.png")

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.add_routes(routes)
    server = await aiohttp_server(app, host="127.0.0.1")
    box.append(ImageHost(server))
    yield box[0]
    box[0].release.set()


async def model_dir(root: Path) -> None:
    folder = root / "models" / "test" / "seer"
    write_gguf(folder / "seer-Q4_K_M.gguf", name="seer", chat_template=PLAIN_TEMPLATE)
    write_mmproj(folder / "mmproj-seer-f16.gguf")


DaemonMaker = Callable[..., contextlib.AbstractAsyncContextManager[tuple[Daemon, Client]]]


@pytest.fixture
def make_daemon(tmp_path: Path, aiohttp_client: Any) -> DaemonMaker:
    """An in-process daemon with a vision model and these settings, and its test client."""

    @contextlib.asynccontextmanager
    async def make(**settings: Any) -> AsyncIterator[tuple[Daemon, Client]]:
        await model_dir(tmp_path)
        values = {"image_urls_max_bytes": LIMIT, **settings}
        async with running_daemon(tmp_path, **values) as daemon:
            yield daemon, await aiohttp_client(daemon.app)

    return make


def chat_body(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "look:"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "seer", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


def responses_body(url: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": "look:"}, {"type": "input_image", "image_url": url}]
    return {
        "model": "seer",
        "max_output_tokens": 4,
        "input": [{"role": "user", "content": content}],
    }


def messages_body(url: str) -> dict[str, Any]:
    content = [
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "text", "text": "look:"},
    ]
    return {"model": "seer", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


async def chat(client: Client, url: str) -> tuple[int, Any]:
    response = await client.post("/v1/chat/completions", json=chat_body(url))
    return response.status, await response.json()


# -- refused by default -----------------------------------------------------------------------


async def test_refused_by_default_naming_the_setting(
    make_daemon: DaemonMaker, host: ImageHost
) -> None:
    async with make_daemon() as (_, client):
        status, body = await chat(client, host.url("/cat.png"))
        assert status == 400, body
        assert body["error"]["code"] == "image_url_not_supported"
        assert "image_urls setting" in body["error"]["message"]
        response = await client.post(
            "/v1/messages", json=messages_body(host.url("/cat.png")), headers=ANTHROPIC
        )
        body = await response.json()
        assert response.status == 400 and body["type"] == "error"
        assert "image_urls setting" in body["error"]["message"]
    assert host.seen == []  # nothing was fetched


async def test_settings_are_checked() -> None:
    assert Settings().image_urls is False and Settings().image_urls_allow_private is False
    for bad in ({"image_urls_timeout": 0.0}, {"image_urls_max_bytes": 0}):
        with pytest.raises(ConfigError):
            Settings(**bad)
    loaded = load_settings(
        config_file=Path("/nonexistent/config.yaml"),
        env={"LMS_IMAGE_URLS": "on", "LMS_IMAGE_URLS_TIMEOUT": "2.5"},
    )
    assert loaded.image_urls is True and loaded.image_urls_timeout == 2.5


# -- allowed: every surface -------------------------------------------------------------------


async def test_every_surface_takes_an_image_url(make_daemon: DaemonMaker, host: ImageHost) -> None:
    url = host.url("/cat.png")
    async with make_daemon(image_urls=True, image_urls_allow_private=True) as (_, client):
        status, body = await chat(client, url)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
        response = await client.post("/v1/responses", json=responses_body(url))
        body = await response.json()
        assert response.status == 200, body
        assert body["status"] == "completed" and body["output"]
        response = await client.post("/v1/messages", json=messages_body(url), headers=ANTHROPIC)
        body = await response.json()
        assert response.status == 200, body
        assert body["content"][0]["text"]
        items = [{"type": "image", "data_url": url}, {"type": "text", "content": "look:"}]
        v1 = {"model": "seer", "input": items}
        response = await client.post("/api/v1/chat", json=v1)
        assert response.status == 200, await response.text()
        stream = {**chat_body(url), "stream": True}
        response = await client.post("/v1/chat/completions", json=stream)
        assert response.status == 200
        await response.read()
    assert len(host.seen) == 5
    for headers in host.seen:
        assert set(headers) <= OWN_HEADERS, headers
        assert headers["accept"] == "image/*"


async def test_the_fetched_bytes_become_the_image(host: ImageHost) -> None:
    settings = Settings(image_urls=True, image_urls_allow_private=True)
    cat, bin_, redirected = host.url("/cat.png"), host.url("/cat.bin"), host.url("/to-cat")
    content = (
        TextPart("a"),
        ImageUrl(cat, "p0"),
        ImageUrl(bin_, "p1"),
        ImageUrl(redirected, "p2"),
        ImageUrl(cat, "p3"),
    )
    prediction = Prediction("m", (Message("user", content),))
    resolved = await resolve_image_urls(prediction, settings, WebImageFetcher())
    (message,) = resolved.messages
    assert message.content == (
        TextPart("a"),
        ImagePart(PNG, "image/png"),
        ImagePart(PNG, "image/*"),  # octet-stream: the image decoder decides
        ImagePart(PNG, "image/png"),
        ImagePart(PNG, "image/png"),
    )
    assert len(host.seen) == 3  # the same URL twice is fetched once


async def test_not_an_image_is_a_400(make_daemon: DaemonMaker, host: ImageHost) -> None:
    async with make_daemon(image_urls=True, image_urls_allow_private=True) as (_, client):
        status, body = await chat(client, host.url("/page.html"))
        assert status == 400 and body["error"]["code"] == "invalid_image"
        assert "text/html" in body["error"]["message"]
        status, body = await chat(client, host.url("/broken.png"))  # the decoder's verdict
        assert status == 400 and body["error"]["code"] == "invalid_image"


async def test_failed_fetches_are_400s(make_daemon: DaemonMaker, host: ImageHost) -> None:
    async with make_daemon(image_urls=True, image_urls_allow_private=True) as (_, client):
        status, body = await chat(client, host.url("/missing.png"))
        assert status == 400 and body["error"]["code"] == "image_url_failed"
        assert "HTTP 404" in body["error"]["message"]
        status, body = await chat(client, host.url("/loop"))
        assert status == 400 and "more than 3 redirects" in body["error"]["message"]


# -- limits -----------------------------------------------------------------------------------


async def test_too_large_is_a_413_with_the_numbers(
    make_daemon: DaemonMaker, host: ImageHost
) -> None:
    async with make_daemon(image_urls=True, image_urls_allow_private=True) as (_, client):
        status, body = await chat(client, host.url("/declared-big.png"))
        assert status == 413 and body["error"]["code"] == "image_too_large"
        assert f"{LIMIT + 1} bytes" in body["error"]["message"]
        assert f"at most {LIMIT} bytes" in body["error"]["message"]
        response = await client.post(
            "/v1/messages", json=messages_body(host.url("/endless.png")), headers=ANTHROPIC
        )
        body = await response.json()
        assert response.status == 413 and body["error"]["type"] == "request_too_large"
        assert f"more than {LIMIT} bytes" in body["error"]["message"]


async def test_the_size_limit_is_also_max_image_bytes(host: ImageHost) -> None:
    settings = Settings(image_urls=True, image_urls_allow_private=True, max_image_bytes=100)
    prediction = Prediction("m", (Message("user", (ImageUrl(host.url("/cat.png"), "p"),)),))
    assert len(PNG) > 100
    with pytest.raises(PayloadTooLarge, match="at most 100 bytes"):
        await resolve_image_urls(prediction, settings, WebImageFetcher())


async def test_a_slow_server_times_out(make_daemon: DaemonMaker, host: ImageHost) -> None:
    settings = {"image_urls": True, "image_urls_allow_private": True, "image_urls_timeout": 0.2}
    async with make_daemon(**settings) as (_, client):
        response = await client.post("/v1/responses", json=responses_body(host.url("/slow.png")))
        body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "image_url_timeout"
    assert "127.0.0.1" in body["error"]["message"] and "0.2 s" in body["error"]["message"]


async def test_fetches_at_once_are_bounded(host: ImageHost) -> None:
    fetcher = WebImageFetcher(max_fetches=1)
    limits = FetchLimits(max_bytes=LIMIT, timeout=30.0, allow_private=True)
    holding = asyncio.create_task(fetcher.fetch(host.url("/slow.png"), limits, param="a"))
    while not host.seen and not holding.done():  # the slow fetch holds the slot
        await asyncio.sleep(0.01)
    assert not holding.done(), holding.exception()
    short = FetchLimits(max_bytes=LIMIT, timeout=0.2, allow_private=True)
    # The one slot is taken by the slow fetch: this one waits for it until its time is up.
    with pytest.raises(InvalidRequest, match="took longer"):
        await fetcher.fetch(host.url("/cat.png"), short, param="b")
    assert len(host.seen) == 1  # /cat.png was never asked for
    host.release.set()
    assert (await holding).data == PNG
    assert (await fetcher.fetch(host.url("/cat.png"), limits, param="c")).data == PNG


# -- where a fetch may go ---------------------------------------------------------------------


async def test_loopback_is_refused_unless_allowed(
    make_daemon: DaemonMaker, host: ImageHost
) -> None:
    port = host.server.port
    async with make_daemon(image_urls=True) as (_, client):
        for url in (host.url("/cat.png"), f"http://localhost:{port}/cat.png"):
            status, body = await chat(client, url)
            assert status == 400, body
            assert body["error"]["code"] == "image_url_not_allowed"
            assert "image_urls_allow_private" in body["error"]["message"]
    assert host.seen == []


def only_this_loopback(address: IPAddress, allow_private: bool) -> bool:
    """The real policy, with the test server's own address counted as public."""
    return address == IPv4Address("127.0.0.1") or address_allowed(address, allow_private)


async def test_a_redirect_to_a_private_address_is_refused(
    make_daemon: DaemonMaker, host: ImageHost
) -> None:
    async with make_daemon(image_urls=True) as (daemon, client):
        daemon.core.predictions.image_fetcher = WebImageFetcher(policy=only_this_loopback)
        status, body = await chat(client, host.url("/to-cat"))  # a redirect that may go
        assert status == 200, body
        for path, where in (
            ("/to-metadata", "169.254.169.254"),
            ("/to-other-loopback", "127.0.0.2"),
        ):
            status, body = await chat(client, host.url(path))
            assert status == 400, body
            assert body["error"]["code"] == "image_url_not_allowed"
            assert where in body["error"]["message"]
    assert len(host.seen) == 1  # only the allowed redirect reached an image


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("0.0.0.0", False),
        ("224.0.0.1", False),
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    parsed = ip_address(address)
    assert address_allowed(parsed, False) is public
    unspecified_or_multicast = parsed.is_unspecified or parsed.is_multicast
    assert address_allowed(parsed, True) is not unspecified_or_multicast


async def test_too_many_urls_in_one_request() -> None:
    settings = Settings(image_urls=True)
    parts = tuple(ImageUrl(f"https://example.com/{i}.png", f"p{i}") for i in range(17))
    with pytest.raises(InvalidRequest, match="at most 16"):
        await resolve_image_urls(
            Prediction("m", (Message("user", parts),)), settings, WebImageFetcher()
        )
