"""LM Studio's SDK WebSockets (`ws://host:port/llm`, `/embedding`, `/system`, ...): the
transport for daemon/sdk (protocol, endpoints, one session per connection).

The upgrade itself is a public route, so that SDKs that put their API key in the
handshake frame can still reach it; what the connection may do is decided at the
handshake from the key it presents (the `Authorization`/`x-api-key` header of the
upgrade, or the handshake's `apiToken`), by the same rules as HTTP (docs/sdk.md):
the inference level, and admin for pinned loads and unloads. Foreign `Host` names are
refused by the access middleware like everywhere; a web page on another origin is
refused here, before the upgrade (a browser opens a WebSocket to localhost without any
CORS check).
"""

import asyncio
import logging
import weakref
from typing import Any

from aiohttp import WSMsgType, web

from daemon.errors import InvalidRequest, Unauthorized
from daemon.http.browsers import cross_site_refusal
from daemon.http.channel import via_unix_socket
from daemon.http.errors import response_for
from daemon.http.keys import CONTROL, MANAGER, MODELS, PREDICTIONS, UPSTREAMS
from daemon.http.routes import PUBLIC, Route
from daemon.http.security import presented_key
from daemon.sdk import protocol
from daemon.sdk.context import Context
from daemon.sdk.files import UploadedFiles
from daemon.sdk.session import Session
from lms.api.version import __version__

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0  # seconds for the client's first frame
SOCKETS: web.AppKey["weakref.WeakSet[web.WebSocketResponse]"] = web.AppKey("sdk_sockets")
FILES = web.AppKey("sdk_files", UploadedFiles)  # images uploaded for later predictions


def _refused_hello(exc: Exception) -> dict[str, Any]:
    return protocol.hello_refused(protocol.error_of(exc))


def _access(request: web.Request, hello: protocol.Hello) -> bool:
    """Whether this connection is admin; raises Unauthorized where it may not connect."""
    if via_unix_socket(request):
        return True
    control = request.app[CONTROL]
    required = control.auth_required()
    secret = presented_key(request) or hello.api_token
    key = control.keys.check(secret) if secret else None
    if key is None and hello.client_passkey:  # an SDK that sends its key as the passkey
        key = control.keys.check(hello.client_passkey)
    if key is None and secret is not None and required:
        raise Unauthorized("Incorrect API key provided")
    if key is None and required:
        raise Unauthorized(
            "This server requires an API key: set LM_API_TOKEN (or pass apiToken / "
            "api_token) with a key from `lms server key create`"
        )
    return key is not None and key.scope == "admin"


def _socket_handler(namespace: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not via_unix_socket(request):
            refusal = cross_site_refusal(request)
            if refusal is not None:
                return response_for(refusal)
        ws = web.WebSocketResponse(max_msg_size=protocol.MAX_FRAME_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:
            raise InvalidRequest(
                f"/{namespace} is LM Studio's SDK WebSocket: connect with ws:// "
                "(the `lmstudio` or `@lmstudio/sdk` package)"
            )
        await ws.prepare(request)
        sockets = request.app[SOCKETS]
        sockets.add(ws)
        try:
            await _serve(request, ws, namespace)
        finally:
            sockets.discard(ws)
        return ws

    return handler


async def _serve(request: web.Request, ws: web.WebSocketResponse, namespace: str) -> None:
    lock = asyncio.Lock()

    async def send(frame: dict[str, Any]) -> None:
        async with lock:
            await ws.send_str(protocol.dumps(frame))

    try:
        first = await ws.receive(timeout=HANDSHAKE_TIMEOUT)
    except TimeoutError:
        await ws.close(message=b"no handshake")
        return
    if first.type is not WSMsgType.TEXT:
        await ws.close()
        return
    try:
        hello = protocol.parse_hello(first.data)
        admin = _access(request, hello)
    except (protocol.FrameError, Unauthorized) as exc:
        await send(_refused_hello(exc))
        await ws.close(message=b"handshake refused")
        return
    await send(protocol.hello_ok())
    ctx = Context(
        namespace=namespace,
        manager=request.app[MANAGER],
        store=request.app[MODELS],
        predictions=request.app[PREDICTIONS],
        version=__version__,
        admin=admin,
        files=request.app[FILES],
        upstreams=request.app[UPSTREAMS],
    )
    session = Session(ctx, send)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await session.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                await send(protocol.warning("binary frames are not part of the protocol"))
    except (ConnectionError, asyncio.CancelledError):
        log.info("SDK client on /%s went away", namespace)
        raise
    finally:
        await session.close()


async def close_sockets(app: web.Application) -> None:
    """At shutdown: SDK connections would otherwise hold the drain up to its deadline."""
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"server shutting down")


def routes(app: web.Application) -> list[Route]:
    """The namespaces' routes; also registers what closes the open sockets at shutdown."""
    app[SOCKETS] = weakref.WeakSet[web.WebSocketResponse]()
    app[FILES] = UploadedFiles(app[CONTROL].settings.max_image_bytes)
    app.on_shutdown.append(close_sockets)
    return [Route("GET", f"/{ns}", _socket_handler(ns), PUBLIC) for ns in protocol.NAMESPACES]
