"""Chat, completions and embeddings for both API families, as translators around the
prediction service: wire request -> `Prediction` (daemon/compat/requests.py), events ->
OpenAI bodies and chunks (daemon/compat/responses.py). `/v1` (OpenAI) and `/api/v0`
(LM Studio) differ only in v0's `stats`, `model_info` and `runtime`."""

import contextlib
import logging
from typing import Any

from aiohttp import web

from daemon.compat import requests as parse
from daemon.compat import responses as render
from daemon.errors import LmsError
from daemon.http import sse
from daemon.http.errors import read_json_object
from daemon.http.keys import PREDICTIONS
from daemon.http.routes import INFERENCE, Route
from daemon.prediction.service import PredictionRun
from daemon.prediction.types import Prediction, PredictionDone, PredictionFailed

log = logging.getLogger(__name__)


async def collect(run: PredictionRun) -> PredictionDone:
    """A whole prediction, for a non-streamed answer (an error is the HTTP error)."""
    async for event in run.events:
        if isinstance(event, PredictionFailed):
            raise event.error
        if isinstance(event, PredictionDone):
            return event
    raise LmsError("the prediction ended without a result")


async def stream_chunks(
    http_request: web.Request, run: PredictionRun, chunks: render.ChunkStream
) -> web.StreamResponse:
    # Errors before any output (a prompt longer than the context, ...) stay plain HTTP
    # errors: the stream's headers go out only once the first event is there.
    first = await anext(run.events)
    response = await sse.open_stream(http_request)
    try:
        for chunk in chunks.start():
            await sse.send(response, chunk)
        event = first
        while True:
            if isinstance(event, PredictionFailed):
                await sse.send_error(response, event.error)
                break
            for chunk in chunks.event(event):
                await sse.send(response, chunk)
            if isinstance(event, PredictionDone):
                await sse.send_done(response)
                break
            event = await anext(run.events)
    except ConnectionError:
        log.info("client went away: %s stopped", run.model.identifier)
    except LmsError as exc:  # never expected (the service reports failures as events)
        with contextlib.suppress(ConnectionError):
            await sse.send_error(response, exc)
    return response


async def _predict(
    request: web.Request,
    prediction: Prediction,
    *,
    chat: bool,
    stream: bool,
    include_usage: bool,
    v0: bool,
    prefix: str = "",
) -> web.StreamResponse:
    want_logprobs = prediction.params.logprobs
    async with request.app[PREDICTIONS].predict(prediction) as run:
        model = run.model
        if stream:
            chunks = render.ChunkStream(
                model.identifier,
                chat=chat,
                want_logprobs=want_logprobs,
                include_usage=include_usage,
                v0_model=model if v0 else None,
            )
            return await stream_chunks(request, run, chunks)
        done = await collect(run)
    if chat:
        body = render.chat_completion(model.identifier, done, want_logprobs=want_logprobs)
    else:
        body = render.text_completion(
            model.identifier, done, want_logprobs=want_logprobs, prefix=prefix
        )
    if v0:
        body.update(render.lmstudio_extras(done, model))
    return web.json_response(body)


async def chat_completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    parsed = parse.parse_chat(await read_json_object(request))
    return await _predict(
        request,
        parsed.prediction,
        chat=True,
        stream=parsed.stream,
        include_usage=parsed.include_usage,
        v0=v0,
    )


async def completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    parsed = parse.parse_completion(await read_json_object(request))
    prompt = parsed.prediction.prompt or ""
    return await _predict(
        request,
        parsed.prediction,
        chat=False,
        stream=parsed.stream,
        include_usage=parsed.include_usage,
        v0=v0,
        prefix=prompt if parsed.echo else "",
    )


async def embeddings(request: web.Request, *, v0: bool) -> web.StreamResponse:
    embedding = parse.parse_embedding(await read_json_object(request))
    result = await request.app[PREDICTIONS].embed(embedding)
    model_id = result.model.identifier
    if v0 and result.model.quantization:
        model_id = f"{model_id}@{result.model.quantization.lower()}"
    return web.json_response(render.embeddings(model_id, result.vectors, result.prompt_tokens))


def _bind(handler: Any, v0: bool) -> Any:
    async def route(request: web.Request) -> web.StreamResponse:
        return await handler(request, v0=v0)  # type: ignore[no-any-return]

    return route


def routes() -> list[Route]:
    table = []
    for prefix, v0 in (("/v1", False), ("/api/v0", True)):
        table += [
            Route("POST", f"{prefix}/chat/completions", _bind(chat_completions, v0), INFERENCE),
            Route("POST", f"{prefix}/completions", _bind(completions, v0), INFERENCE),
            Route("POST", f"{prefix}/embeddings", _bind(embeddings, v0), INFERENCE),
        ]
    return table
