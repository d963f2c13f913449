"""Slow and silent clients on the real TCP listener (daemon/http/limits.py): a body that
never arrives, headers that never end, more connections than the limit. The daemon runs in
this process with the fake engine and listens on a free port."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from daemon.http.limits import HttpLimits, LimitedTCPSite
from daemon.server import Daemon
from tests.inprocess import in_process_daemon

GUARD = 60.0  # seconds: only a hang guard, never a measure of how fast the server is
LONG = 3600.0  # a limit that never fires during a test
HUGE_BODY = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000000000000000\r\n\r\n"
)
PARTIAL_HEADERS = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def listening(root: Path, limits: HttpLimits) -> AsyncIterator[Daemon]:
    template = in_process_daemon(root, port=0, bind="127.0.0.1")
    template.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(template.settings, template.paths, template.config_file, limits=limits)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


def port_of(daemon: Daemon) -> int:
    return daemon.status()["http"]["port"]


async def connect(daemon: Daemon, first: bytes) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(daemon))
    writer.write(first)
    await writer.drain()
    return reader, writer


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF)."""
    return await asyncio.wait_for(reader.read(), GUARD)


async def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    async with listening(tmp_path, HttpLimits(header_timeout=LONG, body_timeout=0.2)) as daemon:
        reader, writer = await connect(daemon, HUGE_BODY)
        answer = await until_closed(reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_headers_that_never_end_are_closed(tmp_path: Path) -> None:
    async with listening(tmp_path, HttpLimits(header_timeout=0.2, body_timeout=LONG)) as daemon:
        silent = await connect(daemon, b"")
        partial = await connect(daemon, PARTIAL_HEADERS)
        assert await until_closed(silent[0]) == b""
        assert await until_closed(partial[0]) == b""
        for _, writer in (silent, partial):
            writer.close()


async def test_past_the_connection_limit_half_open_ones_make_room_for_a_request(
    tmp_path: Path,
) -> None:
    limit = 4
    limits = HttpLimits(header_timeout=LONG, body_timeout=LONG, max_connections=limit)
    async with listening(tmp_path, limits) as daemon:
        half_open = [await connect(daemon, PARTIAL_HEADERS) for _ in range(limit * 2)]
        # The first ones were closed to make room for the later ones.
        for reader, _ in half_open[:limit]:
            assert await until_closed(reader) == b""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port_of(daemon)}/v1/models") as response,
        ):
            assert response.status == 200
            assert (await response.json())["object"] == "list"
        site = daemon._tcp_site
        assert isinstance(site, LimitedTCPSite)
        assert len(site.gate.open) <= limit
        for _, writer in half_open:
            writer.close()


async def test_streams_outlive_the_read_timeouts(tmp_path: Path) -> None:
    # The timeouts bound reading the request, never writing the answer: a stream that
    # runs far longer than both limits arrives whole.
    async with listening(tmp_path, HttpLimits(header_timeout=0.05, body_timeout=0.05)) as daemon:
        body: dict[str, Any] = {
            "model": "endless",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40,
            "stream": True,
        }
        url = f"http://127.0.0.1:{port_of(daemon)}/v1/chat/completions"
        events: list[str] = []
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
            assert response.status == 200
            async for raw in response.content:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
        assert events[-1] == "[DONE]"
        finish = [json.loads(e)["choices"] for e in events[:-1]]
        assert any(c and c[0].get("finish_reason") == "length" for c in finish)
