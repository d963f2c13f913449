"""LM Studio's native REST API v1: `GET /api/v1/models` and `POST /api/v1/chat`, as
translators (daemon/compat/lmstudio_v1.py) around the catalog, the manager and the
prediction service. `/api/v1/models/load|unload` live in lifecycle_routes.py."""

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
from daemon.prediction.types import (
    Message,
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
    store = request.app[CONVERSATIONS]
    history: tuple[Message, ...] = ()
    if parsed.previous_response_id is not None:
        history = store.get(parsed.previous_response_id).messages
    prediction = parsed.prediction(history)
    async with request.app[PREDICTIONS].predict(prediction) as run:
        instance_id = run.model.identifier
        load_seconds = run.model.load_seconds
        stream = v1.EventStream(instance_id)

        def result(done: PredictionDone) -> dict[str, object]:
            response_id = None
            body = v1.chat_result(
                instance_id,
                done,
                reasoning_tokens=stream.reasoning_tokens,
                load_seconds=load_seconds,
            )
            if parsed.store:
                response_id = new_response_id("resp")
                body["response_id"] = response_id
                messages = (*prediction.messages, v1.answer_message(done))
                store.put(response_id, instance_id, messages, body)
            return body

        if not parsed.stream:
            async for event in run.events:
                if isinstance(event, PredictionFailed):
                    raise event.error
                if isinstance(event, ReasoningFragment):
                    stream.reasoning_tokens += 1
                if isinstance(event, PredictionDone):
                    return web.json_response(result(event))
            raise LmsError("the prediction ended without a result")

        # Errors before any output stay plain HTTP errors: the stream opens on the first event.
        first = await anext(run.events)
        response = await sse.open_stream(request)
        try:
            for name, data in stream.start(load_seconds):
                await sse.send_event(response, name, data)
            event = first
            while True:
                if isinstance(event, PredictionFailed):
                    error = v1.v1_error(error_info(event.error))
                    for name, data in stream.failed(error):
                        await sse.send_event(response, name, data)
                    break
                if isinstance(event, PredictionDone):
                    for name, data in stream.end(result(event)):
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
