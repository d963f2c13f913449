"""Anthropic's Messages API over the prediction service: `POST /v1/messages` (a Message,
or its stream of named events) and `POST /v1/messages/count_tokens`. The translators are
daemon/compat/anthropic.py; errors on these routes are in Anthropic's shape
(`anthropic_error`), the access middleware's 401 included. Any `anthropic-version`
header is accepted; `x-api-key` is a key like `Authorization: Bearer` (security.py)."""

import contextlib
import logging

from aiohttp import web

from daemon.compat import anthropic
from daemon.compat.errors import ErrorInfo
from daemon.errors import InvalidRequest, LmsError
from daemon.http import sse
from daemon.http.errors import error_info, read_json_object
from daemon.http.keys import MANAGER, PREDICTIONS
from daemon.http.routes import INFERENCE, Route
from daemon.prediction import tools
from daemon.prediction.service import PredictionRun, template_messages
from daemon.prediction.types import PredictionDone, PredictionFailed

log = logging.getLogger(__name__)


async def _send_error(response: web.StreamResponse, exc: Exception) -> None:
    """An error once the stream has begun: Anthropic's `error` event."""
    if isinstance(exc, LmsError):
        info = error_info(exc)
    else:
        info = ErrorInfo(500, "server_error", "Internal server error")
    await sse.send_event(response, "error", anthropic.anthropic_error(info))


async def _stream(
    request: web.Request, run: PredictionRun, stream: anthropic.MessageStream
) -> web.StreamResponse:
    # An error before any output stays a plain HTTP error: the stream opens once the
    # first event is there.
    first = await anext(run.events)
    response = await sse.open_stream(request)
    try:
        for name, payload in stream.start():
            await sse.send_event(response, name, payload)
        event = first
        while True:
            if isinstance(event, PredictionFailed):
                await _send_error(response, event.error)
                break
            for name, payload in stream.event(event):
                await sse.send_event(response, name, payload)
            if isinstance(event, PredictionDone):
                break
            event = await anext(run.events)
    except ConnectionError:
        log.info("client went away: %s stopped", run.model.identifier)
    except LmsError as exc:  # never expected (the service reports failures as events)
        with contextlib.suppress(ConnectionError):
            await _send_error(response, exc)
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    parsed = anthropic.parse_request(await read_json_object(request))
    async with request.app[PREDICTIONS].predict(parsed.prediction) as run:
        stream = anthropic.MessageStream(run.model.identifier)
        if parsed.stream:
            return await _stream(request, run, stream)
        async for event in run.events:
            if isinstance(event, PredictionFailed):
                raise event.error
            stream.event(event)
            if isinstance(event, PredictionDone):
                return web.json_response(stream.message(event))
    raise LmsError("the prediction ended without a result")


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The prompt's length in tokens, rendered as a prediction would render it (tools
    through the model's template, or LM Studio's default format for the others)."""
    prediction = anthropic.parse_count_request(await read_json_object(request))
    async with request.app[MANAGER].lease(prediction.model, ttl=prediction.ttl) as lease:
        if lease.record.type == "embeddings":
            raise InvalidRequest(
                f"{lease.identifier} is an embedding model: it has no chat prompt to count",
                param="model",
                code="model_not_supported",
            )
        messages = template_messages(prediction.messages)
        setup = prediction.tools
        if setup is None or setup.mode == "none":
            prompt = await lease.engine.render_chat(messages)
        elif "tool_use" in lease.record.capabilities:
            prompt = await lease.engine.render_chat(messages, setup.tools)
        else:
            prompt = await lease.engine.render_chat(tools.fallback_messages(messages, setup))
        count = await lease.engine.count_tokens(prompt)
    return web.json_response({"input_tokens": count})


def routes() -> list[Route]:
    errors = anthropic.anthropic_error
    return [
        Route("POST", "/v1/messages", messages, INFERENCE, errors=errors),
        Route("POST", "/v1/messages/count_tokens", count_tokens, INFERENCE, errors=errors),
    ]
