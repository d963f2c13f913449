"""A streamed load: `POST /api/v1/models/load` with `"stream": true` answers with
server-sent events as the model loads (what `lms load` draws its progress bar from).

LM Studio 0.4 streams no load endpoint (only `/api/v1/chat` has load events), so this is
our opt-in, in the names and shapes of that chat stream's events:

    event: model_load.start     {"type", "model_instance_id"}
    event: model_load.progress  {"type", "model_instance_id", "progress": 0..1}   (repeated)
    event: model_load.end       {"type", "model_instance_id", "load_time_seconds",
                                 "result": <the non-streamed reply>}
    event: error                {"type", "error": {"type", "message", "code"?, "param"?}}

A request the load refuses before it starts (unknown model, bad value, the guardrail...)
is a plain HTTP error, as without `stream`. A client that goes away while the model loads
abandons the load if nobody else waits for it (ModelManager.load).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from daemon.compat.lmstudio_v1 import v1_error
from daemon.errors import LmsError
from daemon.http import sse
from daemon.http.errors import error_info
from daemon.instance import Instance
from daemon.manager import OnLoadProgress
from lms.api.lifecycle import LoadReply

StartLoad = Callable[[OnLoadProgress], Awaitable[Instance]]
ReplyOf = Callable[[Instance], Awaitable[LoadReply]]


def _event(name: str, **data: Any) -> tuple[str, dict[str, Any]]:
    return name, {"type": name, **data}


async def stream_load(
    request: web.Request, start: StartLoad, reply_of: ReplyOf
) -> web.StreamResponse:
    heard: asyncio.Queue[tuple[Instance, float]] = asyncio.Queue()
    loading = asyncio.ensure_future(start(lambda inst, value: heard.put_nowait((inst, value))))
    try:
        # The first progress says the load was accepted: only then does the stream open.
        first = asyncio.ensure_future(heard.get())
        await asyncio.wait({first, loading}, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            inst, value = first.result()
        else:
            first.cancel()
            inst, value = await loading, 1.0  # raises when refused: a plain HTTP error
        response = await sse.open_stream(request)
        ident = inst.identifier
        await sse.send_event(response, *_event("model_load.start", model_instance_id=ident))
        await sse.send_event(
            response, *_event("model_load.progress", model_instance_id=ident, progress=value)
        )
        while not loading.done() or not heard.empty():
            getting = asyncio.ensure_future(heard.get())
            await asyncio.wait({getting, loading}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                continue
            _, value = getting.result()
            await sse.send_event(
                response, *_event("model_load.progress", model_instance_id=ident, progress=value)
            )
        try:
            loaded = loading.result()
        except LmsError as exc:
            error = v1_error(error_info(exc))["error"]
            await sse.send_event(response, *_event("error", error=error))
            return response
        reply = await reply_of(loaded)
        await sse.send_event(
            response,
            *_event(
                "model_load.end",
                model_instance_id=ident,
                load_time_seconds=reply["load_time_seconds"],
                result=reply,
            ),
        )
        return response
    finally:
        if not loading.done():  # the client went away: the load hears it (and may stop)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, LmsError):
                await loading
