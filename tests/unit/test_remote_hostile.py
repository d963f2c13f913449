"""Upstreams that misbehave, played by an aiohttp test server on loopback: nothing they
send (errors, a huge line or body, a malformed stream, silence) takes the daemon down or
holds a request forever, failures fail over and open the circuit, and a client going away
closes the upstream's connection. The breaker's clock is injected: no wall-clock asserts
(the short timeouts below only bound how long a silent upstream can hold a request)."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from daemon.engines.base import ChatRequest, DoneEvent, GenerationParams, TokenEvent
from daemon.errors import UpstreamFailed, UpstreamUnavailable
from daemon.remote import pool as pool_module
from daemon.remote.breaker import BreakerState
from daemon.remote.config import UpstreamStore, upstream_from_dict
from daemon.remote.engine import RemoteHandle
from daemon.remote.pool import UpstreamPool

REQUEST = ChatRequest([{"role": "user", "content": "hi"}], None, GenerationParams(max_tokens=8))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chunk(text: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Hostile:
    """An upstream whose behaviour the test sets (`mode`), counting chat requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        self.disconnected = asyncio.Event()
        self.models_body: bytes | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def models(self, request: web.Request) -> web.StreamResponse:
        if self.models_body is not None:
            return web.Response(body=self.models_body, content_type="application/json")
        return web.json_response({"object": "list", "data": [{"id": "m"}, {"id": 7}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        mode = self.mode
        if mode == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "busy":
            return web.json_response({"error": {"message": "full"}}, status=503)
        if mode == "bad_request":
            return web.json_response({"error": {"message": "context too long"}}, status=400)
        if mode == "hang_headers":
            await asyncio.sleep(3600)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if mode == "ok":
                for word in ("one", " two", " three"):
                    await response.write(chunk(word))
                usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
                await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
            elif mode == "huge_line":
                await response.write(b"data: " + b"x" * (2 * 1024 * 1024))
            elif mode == "malformed":
                await response.write(chunk("one"))
                await response.write(b"data: {not json\n\n")
            elif mode == "hang_body":
                await response.write(chunk("one"))
                await asyncio.sleep(3600)
            elif mode == "endless":
                while True:
                    await response.write(chunk(" more"))
                    await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        return response


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[UpstreamPool, Clock]]:
    clock = Clock()
    pool = UpstreamPool(
        UpstreamStore(tmp_path / "upstreams.json"),
        CollectorRegistry(),
        clock=clock,
        poll_interval=3600,
        breaker_threshold=3,
        breaker_reset_after=30,
    )
    pool.start()
    yield pool, clock
    await pool.close()


async def serve(aiohttp_server: Any, hostile: Hostile) -> str:
    server = await aiohttp_server(hostile.app())
    return str(server.make_url("")).rstrip("/")


async def add(pool: UpstreamPool, name: str, url: str, **extra: Any) -> None:
    config = {"name": name, "base_url": url, "idle_timeout": 0.5, "first_byte_timeout": 0.5}
    await pool.add(upstream_from_dict({**config, **extra}))


async def run(handle: RemoteHandle) -> list[Any]:
    return [event async for event in handle.generate(REQUEST)]


async def test_a_good_stream_passes_token_by_token(aiohttp_server: Any, pool: Any) -> None:
    upstreams, _ = pool
    hostile = Hostile()
    await add(upstreams, "good", await serve(aiohttp_server, hostile))
    assert upstreams.get("good").models == {"m": "m"}  # the non-string id is dropped
    events = await run(RemoteHandle(upstreams, "m"))
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["one", " two", " three"]
    done = events[-1]
    assert isinstance(done, DoneEvent) and (done.prompt_tokens, done.completion_tokens) == (2, 3)


@pytest.mark.parametrize("mode", ["500", "huge_line", "hang_headers", "busy"])
async def test_failures_before_the_first_token_fail_over(
    aiohttp_server: Any, pool: Any, mode: str
) -> None:
    upstreams, _ = pool
    bad, good = Hostile(), Hostile()
    bad.mode = mode
    await add(upstreams, "bad", await serve(aiohttp_server, bad), priority=0)
    await add(upstreams, "good", await serve(aiohttp_server, good), priority=1)
    events = await run(RemoteHandle(upstreams, "m"))
    assert isinstance(events[-1], DoneEvent)
    assert (bad.hits, good.hits) == (1, 1)


@pytest.mark.parametrize("mode", ["malformed", "hang_body"])
async def test_a_stream_broken_after_tokens_ends_with_an_error_naming_the_upstream(
    aiohttp_server: Any, pool: Any, mode: str
) -> None:
    upstreams, _ = pool
    bad, good = Hostile(), Hostile()
    bad.mode = mode
    await add(upstreams, "bad", await serve(aiohttp_server, bad), priority=0)
    await add(upstreams, "good", await serve(aiohttp_server, good), priority=1)
    seen: list[Any] = []
    with pytest.raises(UpstreamFailed) as caught:
        async for event in RemoteHandle(upstreams, "m").generate(REQUEST):
            seen.append(event)
    assert [e.text for e in seen] == ["one"]
    assert caught.value.upstream == "bad" and "'bad'" in str(caught.value)
    assert good.hits == 0  # tokens had gone out: no silent retry elsewhere
    # the next request goes elsewhere once the bad one's circuit opens; meanwhile it
    # still works through the good one whenever the bad one fails before a token
    bad.mode = "500"
    assert isinstance((await run(RemoteHandle(upstreams, "m")))[-1], DoneEvent)


async def test_a_client_error_is_not_retried_and_not_a_fault(
    aiohttp_server: Any, pool: Any
) -> None:
    upstreams, _ = pool
    bad = Hostile()
    bad.mode = "bad_request"
    await add(upstreams, "bad", await serve(aiohttp_server, bad))
    with pytest.raises(Exception) as caught:
        await run(RemoteHandle(upstreams, "m"))
    assert "context too long" in str(caught.value) and "'bad'" in str(caught.value)
    assert upstreams.get("bad").breaker.failures == 0


async def test_circuit_opens_then_a_probe_closes_it(
    aiohttp_server: Any, pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    upstreams, clock = pool
    flaky = Hostile()
    flaky.mode = "500"
    await add(upstreams, "flaky", await serve(aiohttp_server, flaky))
    handle = RemoteHandle(upstreams, "m")
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable) as caught:
            await run(handle)
        assert "'flaky'" in str(caught.value) and "answered 500" in str(caught.value)
    breaker = upstreams.get("flaky").breaker
    assert breaker.state is BreakerState.OPEN and flaky.hits == 3
    with pytest.raises(UpstreamUnavailable) as caught:
        await run(handle)
    assert flaky.hits == 3  # open: not even tried
    assert "circuit is open" in str(caught.value) and "flaky" in str(caught.value)
    clock.now += 30  # half-open: one probe goes through
    flaky.mode = "ok"
    assert isinstance((await run(handle))[-1], DoneEvent)
    assert breaker.state is BreakerState.CLOSED and flaky.hits == 4
    # the events `lms log stream --source server` shows (warnings reach the event bus)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("flaky: circuit open after 3 failures" in m for m in said), said
    assert any("flaky: circuit closed" in m for m in said), said


async def test_a_client_going_away_closes_the_upstream_connection(
    aiohttp_server: Any, pool: Any
) -> None:
    upstreams, _ = pool
    endless = Hostile()
    endless.mode = "endless"
    await add(upstreams, "endless", await serve(aiohttp_server, endless))
    stream = RemoteHandle(upstreams, "m").generate(REQUEST)
    for _ in range(3):
        assert isinstance(await anext(stream), TokenEvent)
    await stream.aclose()
    await asyncio.wait_for(endless.disconnected.wait(), 10)
    upstream = upstreams.get("endless")
    assert upstream.in_flight == 0 and upstream.breaker.failures == 0


async def test_a_hanging_upstream_blocks_no_other_model(aiohttp_server: Any, pool: Any) -> None:
    upstreams, _ = pool
    hang, good = Hostile(), Hostile()
    hang.mode = "hang_body"
    await add(upstreams, "hang", await serve(aiohttp_server, hang), idle_timeout=3600)
    await add(upstreams, "good", await serve(aiohttp_server, good), models=["m=other"])
    stuck = RemoteHandle(upstreams, "m").generate(REQUEST)
    assert isinstance(await anext(stuck), TokenEvent)  # and then silence
    events = await run(RemoteHandle(upstreams, "other"))
    assert isinstance(events[-1], DoneEvent)
    await stuck.aclose()


async def test_a_huge_or_bad_model_list_marks_the_upstream_down(
    aiohttp_server: Any, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstreams, _ = pool
    monkeypatch.setattr(pool_module, "MAX_BODY_BYTES", 1000)
    hostile = Hostile()
    hostile.models_body = b'{"data": [' + b'{"id": "x"},' * 500 + b'{"id": "y"}]}'
    await add(upstreams, "huge", await serve(aiohttp_server, hostile))
    upstream = upstreams.get("huge")
    assert upstream.reachable is False and upstream.models == {}
    assert "limit" in (upstream.last_error or "")
    hostile.models_body = b"not json"
    await upstreams.poll(upstream)
    assert upstream.reachable is False and "not JSON" in (upstream.last_error or "")
