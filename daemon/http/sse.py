"""Server-sent events: OpenAI's `data: {json}` ... `data: [DONE]`, and named events
(`event: name` + `data: {json}`) for the surfaces that use them."""

import json
from typing import Any

from aiohttp import web

from daemon.compat.errors import ErrorInfo, ErrorShape, openai_error
from daemon.errors import LmsError
from daemon.http.errors import error_info


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


async def send_event(response: web.StreamResponse, event: str, payload: dict[str, Any]) -> None:
    """A named event, `event: <name>` then its data (Responses API, Anthropic, REST v1)."""
    data = json.dumps(payload)
    await response.write(f"event: {event}\ndata: {data}\n\n".encode())


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")


async def send_error(
    response: web.StreamResponse, exc: Exception, shape: ErrorShape = openai_error
) -> None:
    """An error after the stream began: one error event (OpenAI's clients raise it)."""
    if isinstance(exc, LmsError):
        info = error_info(exc)
    else:
        info = ErrorInfo(500, "server_error", "Internal server error")
    await send(response, shape(info))
