"""OpenAI's Responses API: `POST /v1/responses` (plain or streamed as named events),
`GET` and `DELETE /v1/responses/{response_id}` for the stored ones. Translators in
daemon/compat/openai_responses.py; stored conversations (previous_response_id) in the
app's ConversationStore: in memory, bounded in count and age."""

import contextlib
import logging

from aiohttp import web

from daemon.compat import openai_responses as responses
from daemon.errors import LmsError
from daemon.http import sse
from daemon.http.errors import error_info, read_json_object
from daemon.http.keys import CONVERSATIONS, PREDICTIONS
from daemon.http.routes import INFERENCE, Route
from daemon.prediction.conversations import new_response_id
from daemon.prediction.service import PredictionRun
from daemon.prediction.types import Message, PredictionDone, PredictionFailed

log = logging.getLogger(__name__)


def _store(
    request: web.Request,
    parsed: responses.ParsedResponse,
    builder: responses.ResponseStream,
    history: tuple[Message, ...],
) -> None:
    """Keep the conversation (without the instructions, as OpenAI does) and the answer."""
    if not parsed.store or builder.done is None:
        return
    messages = history + parsed.input + (responses.answer_message(builder.done),)
    request.app[CONVERSATIONS].put(
        builder.response_id, builder.model_id, messages, builder.response()
    )


async def _stream(
    request: web.Request,
    run: PredictionRun,
    parsed: responses.ParsedResponse,
    builder: responses.ResponseStream,
    history: tuple[Message, ...],
) -> web.StreamResponse:
    # An error before the first event (a prompt longer than the context, ...) stays a
    # plain HTTP error: the stream's headers go out only once the first event is there.
    first = await anext(run.events)
    response = await sse.open_stream(request)
    try:
        for name, payload in builder.start():
            await sse.send_event(response, name, payload)
        event = first
        while True:
            if isinstance(event, PredictionFailed):
                for name, payload in builder.fail(error_info(event.error)):
                    await sse.send_event(response, name, payload)
                break
            for name, payload in builder.event(event):
                await sse.send_event(response, name, payload)
            if isinstance(event, PredictionDone):
                _store(request, parsed, builder, history)
                break
            event = await anext(run.events)
    except ConnectionError:
        log.info("client went away: %s stopped", run.model.identifier)
    except LmsError as exc:  # never expected (the service reports failures as events)
        with contextlib.suppress(ConnectionError):
            for name, payload in builder.fail(error_info(exc)):
                await sse.send_event(response, name, payload)
    return response


async def create_response(request: web.Request) -> web.StreamResponse:
    parsed = responses.parse_response_request(await read_json_object(request))
    history: tuple[Message, ...] = ()
    if parsed.previous_response_id is not None:
        history = request.app[CONVERSATIONS].get(parsed.previous_response_id).messages
    prediction = parsed.prediction(history)
    async with request.app[PREDICTIONS].predict(prediction) as run:
        builder = responses.ResponseStream(new_response_id(), run.model.identifier, parsed)
        if parsed.stream:
            return await _stream(request, run, parsed, builder, history)
        async for event in run.events:
            if isinstance(event, PredictionFailed):
                raise event.error
            builder.event(event)
            if isinstance(event, PredictionDone):
                break
    if builder.done is None:
        raise LmsError("the prediction ended without a result")
    _store(request, parsed, builder, history)
    return web.json_response(builder.response())


async def get_response(request: web.Request) -> web.Response:
    stored = request.app[CONVERSATIONS].get(request.match_info["response_id"])
    return web.json_response(stored.body)


async def delete_response(request: web.Request) -> web.Response:
    stored = request.app[CONVERSATIONS].delete(request.match_info["response_id"])
    return web.json_response(responses.deleted(stored.id))


def routes() -> list[Route]:
    return [
        Route("POST", "/v1/responses", create_response, INFERENCE),
        Route("GET", "/v1/responses/{response_id}", get_response, INFERENCE),
        Route("DELETE", "/v1/responses/{response_id}", delete_response, INFERENCE),
    ]
