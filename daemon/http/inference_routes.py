"""Chat, completions and embeddings for both API families, as translators around the
prediction service: wire request -> `Prediction` (daemon/compat/requests.py), events ->
OpenAI bodies and chunks (daemon/compat/responses.py). `/v1` (OpenAI) and `/api/v0`
(LM Studio) differ only in v0's `stats`, `model_info` and `runtime`.

`n` > 1 runs n predictions of the request side by side (they take parallel slots; with a
seed, seed, seed+1, ...): the answer has a choice per prediction, and a stream interleaves
their chunks, each with its choice's index."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from daemon.compat import requests as parse
from daemon.compat import responses as render
from daemon.engines.base import DoneEvent
from daemon.errors import LmsError
from daemon.http import sse
from daemon.http.errors import read_json_object
from daemon.http.keys import PREDICTIONS
from daemon.http.routes import INFERENCE, Route
from daemon.prediction.service import PredictionRun
from daemon.prediction.types import (
    Prediction,
    PredictionDone,
    PredictionEvent,
    PredictionFailed,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


async def _all(awaitables: Sequence[Awaitable[_T]]) -> list[_T]:
    """Every result, or the first error once the others are cancelled and have ended (so
    that nothing still iterates a prediction's events when its block closes them)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stream_choices(
    http_request: web.Request,
    runs: list[PredictionRun],
    streams: list[render.ChunkStream],
    *,
    include_usage: bool,
) -> web.StreamResponse:
    """n streamed choices in one stream: each run's chunks, by its ChunkStream (choice
    index), in the order they come; the usage of all of them at the end."""
    firsts = await _all([anext(run.events) for run in runs])  # errors: plain HTTP errors
    response = await sse.open_stream(http_request)
    queue: asyncio.Queue[tuple[int, PredictionEvent]] = asyncio.Queue()

    async def pump(index: int, event: PredictionEvent) -> None:
        try:
            while True:
                await queue.put((index, event))
                if isinstance(event, PredictionDone | PredictionFailed):
                    return
                event = await anext(runs[index].events)
        except LmsError as exc:  # never expected (the service reports failures as events)
            await queue.put((index, PredictionFailed(exc)))
        except StopAsyncIteration:
            await queue.put((index, PredictionFailed(LmsError("the prediction ended early"))))

    tasks = [asyncio.create_task(pump(i, first)) for i, first in enumerate(firsts)]
    try:
        for stream in streams:
            for chunk in stream.start():
                await sse.send(response, chunk)
        stats: list[DoneEvent] = []
        while len(stats) < len(runs):
            index, event = await queue.get()
            if isinstance(event, PredictionFailed):
                await sse.send_error(response, event.error)
                return response
            for chunk in streams[index].event(event):
                await sse.send(response, chunk)
            if isinstance(event, PredictionDone):
                stats.append(event.stats)
        if include_usage:
            first = streams[0]
            ids = (first.completion_id, first.model_id, first.created)
            empty = (
                render.chat_chunk(*ids, delta={})
                if first.chat
                else render.text_chunk(*ids, text="")
            )
            await sse.send(response, render.usage_chunk(empty, stats))
        await sse.send_done(response)
    except ConnectionError:
        log.info("client went away: %s stopped", runs[0].model.identifier)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return response


async def _predict_choices(
    request: web.Request,
    prediction: Prediction,
    n: int,
    *,
    chat: bool,
    stream: bool,
    include_usage: bool,
    v0: bool,
    prefix: str = "",
) -> web.StreamResponse:
    want_logprobs = prediction.params.logprobs
    service = request.app[PREDICTIONS]
    async with contextlib.AsyncExitStack() as stack:
        runs = [
            await stack.enter_async_context(service.predict(choice))
            for choice in parse.choice_predictions(prediction, n)
        ]
        model = runs[0].model
        if stream:
            completion_id = render.new_id("chatcmpl" if chat else "cmpl")
            streams = [
                render.ChunkStream(
                    model.identifier,
                    chat=chat,
                    want_logprobs=want_logprobs,
                    include_usage=False,
                    v0_model=model if v0 else None,
                    completion_id=completion_id,
                    created=int(time.time()),
                    index=i,
                )
                for i in range(n)
            ]
            return await stream_choices(request, runs, streams, include_usage=include_usage)
        dones = await _all([collect(run) for run in runs])
    if chat:
        body = render.chat_completion_choices(model.identifier, dones, want_logprobs=want_logprobs)
    else:
        body = render.text_completion_choices(
            model.identifier, dones, want_logprobs=want_logprobs, prefix=prefix
        )
    if v0:
        body.update(render.lmstudio_extras(dones[0], model))
    return web.json_response(body)


async def _predict(
    request: web.Request,
    prediction: Prediction,
    *,
    chat: bool,
    stream: bool,
    include_usage: bool,
    v0: bool,
    prefix: str = "",
    n: int = 1,
) -> web.StreamResponse:
    if n > 1:
        return await _predict_choices(
            request,
            prediction,
            n,
            chat=chat,
            stream=stream,
            include_usage=include_usage,
            v0=v0,
            prefix=prefix,
        )
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
        n=parsed.n,
    )


async def completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    parsed = parse.parse_completion(await read_json_object(request))
    prompt = parsed.prediction.prompt
    return await _predict(
        request,
        parsed.prediction,
        chat=False,
        stream=parsed.stream,
        include_usage=parsed.include_usage,
        v0=v0,
        prefix=prompt if parsed.echo and isinstance(prompt, str) else "",
        n=parsed.n,
    )


async def embeddings(request: web.Request, *, v0: bool) -> web.StreamResponse:
    body = await read_json_object(request)
    embedding = parse.parse_embedding(body)
    encoding = parse.parse_encoding_format(body)
    result = await request.app[PREDICTIONS].embed(embedding)
    model_id = result.model.identifier
    if v0 and result.model.quantization:
        model_id = f"{model_id}@{result.model.quantization.lower()}"
    return web.json_response(
        render.embeddings(model_id, result.vectors, result.prompt_tokens, encoding=encoding)
    )


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
