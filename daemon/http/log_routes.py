"""`GET /api/admin/log/stream`: the diagnostic events behind `lms log stream`, as NDJSON.

The subscription is made before the response starts, and the first line written is empty,
so a client that has read it knows every event published from then on will reach it. The
stream ends when the client goes away (the handler is cancelled) or when the bus closes at
shutdown; nothing here logs per event, so server logs cannot feed back into the stream.
"""

import json

from aiohttp import web

from daemon.errors import InvalidRequest
from daemon.http.keys import EVENTS
from daemon.http.routes import ADMIN, Route
from lms.api import log as api


async def log_stream(request: web.Request) -> web.StreamResponse:
    source = request.query.get("source", api.DEFAULT_SOURCE)
    if source not in api.LOG_SOURCES:
        raise InvalidRequest(
            f"unknown log source {source!r}; use one of: {', '.join(api.LOG_SOURCES)}",
            param="source",
            code="invalid_value",
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    async with request.app[EVENTS].subscribe(source) as events:
        await response.prepare(request)
        try:
            await response.write(b"\n")
            async for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionError:
            pass  # the reader went away
    return response


def routes() -> list[Route]:
    return [Route("GET", api.LOG_STREAM_PATH, log_stream, ADMIN)]
