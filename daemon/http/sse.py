"""Server-sent events in OpenAI's format: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""

import json
from typing import Any

from aiohttp import web

from daemon.errors import LmsError
from daemon.http.errors import classify
from lms.api.errors import error_envelope


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


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")


async def send_error(response: web.StreamResponse, exc: Exception) -> None:
    """An error after the stream began: one error event (OpenAI's clients raise it)."""
    if isinstance(exc, LmsError):
        _, kind, code = classify(exc)
        body = error_envelope(str(exc), type=kind, param=getattr(exc, "param", None), code=code)
    else:
        body = error_envelope("Internal server error", type="server_error")
    await send(response, dict(body))
