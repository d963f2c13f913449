"""Bounds on reading requests, so a slow or silent client cannot hold the server's
connections forever: how long a client may take to send its request's headers (and how
long an idle keep-alive connection stays open), how long it may take to send the body,
and how many TCP connections may be open at once.

They bound *reading* the request only. Once a handler runs, writing its response (an SSE
stream, `lms log stream`) takes as long as it takes.

- Headers: aiohttp's keep-alive timer starts when a connection opens and closes it when
  no complete request has arrived by then; `keepalive_timeout` is that limit.
- Body: `body_timeout_middleware` reads the whole body (what every JSON route does first
  anyway) within `body_timeout`, else answers 408 and closes the connection.
- Connections: `LimitedTCPSite` counts the TCP connections. At the limit a new one makes
  room by closing the oldest connection that is not serving a request (an idle or
  half-open one); when every connection is serving a request, the new one is refused.
  The owner's Unix socket is not counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from daemon.errors import PayloadTooLarge
from daemon.http.errors import error_response
from daemon.http.routes import error_shape_of

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 75.0  # seconds to send a request's headers; idle keep-alive
    body_timeout: float = 120.0  # seconds to send the whole body (max_body_bytes at most)
    max_connections: int = 512  # open TCP connections


def body_timeout_middleware(timeout: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that reads the request body within `timeout` seconds before the
    handler runs (the handler's own `request.read()` then returns it at once)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists and request.can_read_body:
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise PayloadTooLarge(f"Request body too large: {exc.text}") from None
            except TimeoutError:
                log.warning(
                    "closing a connection from %s: the request body did not arrive within %gs",
                    request.remote,
                    timeout,
                )
                response = error_response(
                    408,
                    f"the request body did not arrive within {timeout:g} seconds",
                    type="invalid_request_error",
                    code="request_timeout",
                    shape=error_shape_of(request),
                )
                # Nothing more is read from this client: send the answer, then close.
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
                return response
        return await handler(request)

    return middleware


class _Counted(asyncio.Protocol):
    """A TCP connection's protocol (aiohttp's request handler) behind a counter."""

    def __init__(self, inner: Any, gate: ConnectionGate) -> None:
        self.inner = inner
        self.gate = gate
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.forget(self)
        self.transport = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def serving(self) -> bool:
        """Whether a request is being handled (not idle, not still sending headers)."""
        return bool(getattr(self.inner, "_request_in_progress", True))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionGate:
    """The open TCP connections, oldest first, and the limit on their number."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[_Counted, None] = {}  # insertion order: oldest first

    def admit(self, make: Callable[[], Any]) -> asyncio.Protocol:
        if len(self.open) >= self.limit:
            idle = next((c for c in self.open if not c.serving()), None)
            if idle is None:
                log.warning("refusing a TCP connection: %d requests in progress", self.limit)
                return _Refused()
            log.warning("%d TCP connections open: closing the oldest idle one", self.limit)
            self.forget(idle)
            if idle.transport is not None:
                idle.transport.close()
        counted = _Counted(make(), self)
        self.open[counted] = None
        return counted

    def forget(self, counted: _Counted) -> None:
        self.open.pop(counted, None)


class LimitedTCPSite(web.TCPSite):
    """aiohttp's TCPSite with at most `max_connections` connections open."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int):
        super().__init__(runner, host, port)
        self.gate = ConnectionGate(max_connections)

    async def start(self) -> None:
        # TCPSite.start, with the runner's protocol factory behind the gate.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.gate.admit(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
