"""LM Studio's native REST API v1: `GET /api/v1/models` and `POST /api/v1/chat`, as
translators (daemon/compat/lmstudio_v1.py) around the catalog, the manager and the
prediction service. `/api/v1/models/load|unload` live in lifecycle_routes.py."""

import asyncio
import logging

from aiohttp import web

from daemon.compat import lmstudio_v1 as v1
from daemon.errors import LmsError
from daemon.http import remote_listing, sse
from daemon.http.errors import error_info, read_json_object
from daemon.http.keys import CONVERSATIONS, MANAGER, MODELS, PREDICTIONS, UPSTREAMS
from daemon.http.routes import INFERENCE, Route
from daemon.instance import Instance, State
from daemon.prediction.conversations import new_response_id
from daemon.prediction.service import PredictionRun
from daemon.prediction.types import (
    Message,
    Prediction,
    PredictionDone,
    PredictionFailed,
    ReasoningFragment,
)

log = logging.getLogger(__name__)

MODELS_PATH = "/api/v1/models"
CHAT_PATH = "/api/v1/chat"


def _loaded(inst: Instance) -> v1.LoadedInstance:
    info = inst.engine.info if inst.engine is not None else None
    context = info.context_length if info is not None else inst.config.context_length
    return v1.LoadedInstance(inst.identifier, context, inst.config.parallel)


async def list_models(request: web.Request) -> web.Response:
    catalog = await request.app[MODELS].catalog()
    by_path = request.app[MANAGER].loaded_paths()
    models = [
        v1.model_item(
            record,
            catalog.public_id(record),
            [_loaded(i) for i in by_path.get(record.path, []) if i.state is State.LOADED],
        )
        for record in catalog.records
        if record.error is None
    ]
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    for item in models:
        if item["key"] in remote:
            item["remote"] = remote.pop(item["key"])
    models += [remote_listing.rest_v1_item(key, names) for key, names in remote.items()]
    return web.json_response({"models": models})


async def chat(request: web.Request) -> web.StreamResponse:
    parsed = v1.parse_chat(await read_json_object(request))
    history: tuple[Message, ...] = ()
    if parsed.previous_response_id is not None:
        history = request.app[CONVERSATIONS].get(parsed.previous_response_id).messages
    prediction = parsed.prediction(history)
    predictions = request.app[PREDICTIONS]
    if not parsed.stream:
        async with predictions.predict(prediction) as run:
            reasoning_tokens = 0
            async for event in run.events:
                if isinstance(event, PredictionFailed):
                    raise event.error
                if isinstance(event, ReasoningFragment):
                    reasoning_tokens += 1
                if isinstance(event, PredictionDone):
                    body = _result(request, parsed, prediction, run, event, reasoning_tokens)
                    return web.json_response(body)
            raise LmsError("the prediction ended without a result")

    load = _LoadEvents(request)
    try:
        async with predictions.predict(prediction, on_load_progress=load.hear) as run:
            await load.finish()
            return await _stream(request, parsed, prediction, run, load)
    except LmsError as exc:
        try:
            await load.finish()
            if load.response is None or load.stream is None:
                raise  # nothing sent yet: a plain HTTP error
            for name, data in load.stream.failed(v1.v1_error(error_info(exc))):
                await sse.send_event(load.response, name, data)
        except ConnectionError:
            log.info("client went away while its model loaded")
        return load.response or web.Response(status=499)
    except ConnectionError:
        log.info("client went away while its model loaded")
        return load.response or web.Response(status=499)
    finally:
        load.close()


class _LoadEvents:
    """The events of a just-in-time load that a streamed chat waits for, sent as the load
    goes: the stream opens at the load's first progress (a load refused before it starts
    stays a plain HTTP error), then `chat.start`, `model_load.start` and each
    `model_load.progress`; `_stream` goes on from `model_load.end`."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._heard: asyncio.Queue[float | None] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self.stream: v1.EventStream | None = None
        self.response: web.StreamResponse | None = None

    def hear(self, inst: Instance, progress: float) -> None:
        if self._sender is None:
            self.stream = v1.EventStream(inst.identifier)
            self._sender = asyncio.ensure_future(self._send())
        self._heard.put_nowait(progress)

    async def _send(self) -> None:
        assert self.stream is not None
        self.response = response = await sse.open_stream(self._request)
        for name, data in self.stream.load_started():
            await sse.send_event(response, name, data)
        while (progress := await self._heard.get()) is not None:
            for name, data in self.stream.load_progress(progress):
                await sse.send_event(response, name, data)

    async def finish(self) -> None:
        """Sends what was heard (raises ConnectionError if the client went away)."""
        if self._sender is not None and not self._sender.done():
            self._heard.put_nowait(None)
            await asyncio.shield(self._sender)
        if self._sender is not None and self._sender.done():
            self._sender.result()

    def close(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()


def _result(
    request: web.Request,
    parsed: v1.ParsedChat,
    prediction: Prediction,
    run: PredictionRun,
    done: PredictionDone,
    reasoning_tokens: int,
) -> dict[str, object]:
    """The chat's result (the body, or the stream's `chat.end`); stored when asked."""
    instance_id = run.model.identifier
    body = v1.chat_result(
        instance_id, done, reasoning_tokens=reasoning_tokens, load_seconds=run.model.load_seconds
    )
    if parsed.store:
        response_id = new_response_id("resp")
        body["response_id"] = response_id
        messages = (*prediction.messages, v1.answer_message(done))
        request.app[CONVERSATIONS].put(response_id, instance_id, messages, body)
    return body


async def _stream(
    request: web.Request,
    parsed: v1.ParsedChat,
    prediction: Prediction,
    run: PredictionRun,
    load: _LoadEvents,
) -> web.StreamResponse:
    instance_id = run.model.identifier
    stream = load.stream or v1.EventStream(instance_id)
    # Errors before any output stay plain HTTP errors: the stream opens on the first event
    # (unless the model's load has opened it already).
    first = await anext(run.events)
    response = load.response or await sse.open_stream(request)
    try:
        opening = stream.start(run.model.load_seconds, load_streamed=load.response is not None)
        for name, data in opening:
            await sse.send_event(response, name, data)
        event = first
        while True:
            if isinstance(event, PredictionFailed):
                error = v1.v1_error(error_info(event.error))
                for name, data in stream.failed(error):
                    await sse.send_event(response, name, data)
                break
            if isinstance(event, PredictionDone):
                body = _result(request, parsed, prediction, run, event, stream.reasoning_tokens)
                for name, data in stream.end(body):
                    await sse.send_event(response, name, data)
                break
            for name, data in stream.event(event):
                await sse.send_event(response, name, data)
            event = await anext(run.events)
    except ConnectionError:
        log.info("client went away: %s stopped", instance_id)
    return response


def routes() -> list[Route]:
    return [
        Route("GET", MODELS_PATH, list_models, INFERENCE, errors=v1.v1_error),
        Route("POST", CHAT_PATH, chat, INFERENCE, errors=v1.v1_error),
    ]
