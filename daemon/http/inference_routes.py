"""Chat, completions and embeddings for both API families. `/v1` (OpenAI) and `/api/v0`
(LM Studio) share every step; v0 only adds `stats`, `model_info` and `runtime`."""

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiohttp import web

from daemon.compat import requests as parse
from daemon.compat import responses as render
from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationRequest,
    StreamEvent,
    TokenEvent,
)
from daemon.errors import InvalidRequest, LmsError
from daemon.http import sse
from daemon.http.errors import read_json_object
from daemon.http.keys import MANAGER
from daemon.instance import Instance

log = logging.getLogger(__name__)


def _require_llm(inst: Instance) -> None:
    if inst.record.type == "embeddings":
        raise InvalidRequest(
            f"{inst.identifier} is an embedding model: it cannot generate text; "
            "use /v1/embeddings with it, or choose a chat model",
            param="model",
            code="model_not_supported",
        )


class _Phase:
    """Counts one request in its instance's processing status (what `lms ps` shows)."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.phase = "prompt"
        inst.prompt_processing += 1

    def generating(self) -> None:
        if self.phase == "prompt":
            self.inst.prompt_processing -= 1
            self.inst.generating += 1
            self.phase = "generating"

    def end(self) -> None:
        if self.phase == "prompt":
            self.inst.prompt_processing -= 1
        elif self.phase == "generating":
            self.inst.generating -= 1
        self.phase = "ended"


@contextlib.asynccontextmanager
async def _events(
    inst: Instance, request: GenerationRequest
) -> AsyncIterator[tuple[AsyncGenerator[StreamEvent, None], _Phase]]:
    """The instance's event stream, counted in its status, always closed (a client that
    goes away cancels the generation in the worker)."""
    assert inst.worker is not None
    stream = inst.worker.generate(request)
    phase = _Phase(inst)
    try:
        yield stream, phase
    finally:
        phase.end()
        await stream.aclose()


async def _collect(inst: Instance, request: GenerationRequest) -> render.Generated:
    generated = render.Generated()
    async with _events(inst, request) as (stream, phase):
        async for event in stream:
            phase.generating()
            if isinstance(event, DoneEvent):
                generated.done = event
                return generated
            generated.add(event)
    raise LmsError("the generation ended without a result")


async def _stream(
    http_request: web.Request,
    inst: Instance,
    request: GenerationRequest,
    *,
    chat: bool,
    include_usage: bool,
    want_logprobs: bool,
    v0: bool,
) -> web.StreamResponse:
    model_id = inst.identifier
    completion_id = render.new_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    async with _events(inst, request) as (stream, phase):
        # Errors before any output (a prompt longer than the context, ...) stay plain HTTP
        # errors: the stream's headers go out only once the first token is there.
        event = await anext(stream)
        phase.generating()
        response = await sse.open_stream(http_request)
        try:
            if chat:
                await sse.send(
                    response,
                    render.chat_chunk(
                        completion_id, model_id, created, delta={"role": "assistant", "content": ""}
                    ),
                )
            while isinstance(event, TokenEvent):
                await _send_token(
                    response,
                    event,
                    chat=chat,
                    want_logprobs=want_logprobs,
                    ids=(completion_id, model_id, created),
                )
                event = await anext(stream)
            done = event
            finish = render.finish_reason(done)
            if chat:
                last = render.chat_chunk(completion_id, model_id, created, delta={}, finish=finish)
            else:
                last = render.text_chunk(completion_id, model_id, created, text="", finish=finish)
            if v0:
                assert inst.worker is not None
                last.update(render.lmstudio_extras(done, inst.record, inst.worker.info))
            await sse.send(response, last)
            if include_usage:
                await sse.send(response, render.usage_chunk(last, done))
            await sse.send_done(response)
        except LmsError as exc:
            log.warning("stream for %s ended with an error: %s", model_id, exc)
            with contextlib.suppress(ConnectionError):
                await sse.send_error(response, exc)
        except ConnectionError:
            log.info("client went away: %s stopped", model_id)
    return response


async def _send_token(
    response: web.StreamResponse,
    event: TokenEvent,
    *,
    chat: bool,
    want_logprobs: bool,
    ids: tuple[str, str, int],
) -> None:
    with_logprobs = want_logprobs and event.token_id is not None
    if not event.text and not with_logprobs:
        return  # held back (a possible stop string); nothing to say yet
    logprobs = None
    if with_logprobs:
        logprobs = (render.chat_logprobs if chat else render.completion_logprobs)([event])
    if chat:
        chunk = render.chat_chunk(*ids, delta={"content": event.text}, logprobs=logprobs)
    else:
        chunk = render.text_chunk(*ids, text=event.text, logprobs=logprobs)
    await sse.send(response, chunk)


async def chat_completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    body = await read_json_object(request)
    parsed = parse.parse_chat(body)
    async with request.app[MANAGER].lease(parsed.model, ttl=parsed.ttl) as inst:
        _require_llm(inst)
        engine_request = ChatRequest(parsed.messages, parsed.tools, parsed.params)
        if parsed.stream:
            return await _stream(
                request,
                inst,
                engine_request,
                chat=True,
                include_usage=parsed.include_usage,
                want_logprobs=parsed.params.logprobs,
                v0=v0,
            )
        generated = await _collect(inst, engine_request)
        body_out = render.chat_completion(
            inst.identifier, generated, want_logprobs=parsed.params.logprobs
        )
        return _json(body_out, inst, generated, v0)


async def completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    body = await read_json_object(request)
    parsed = parse.parse_completion(body)
    async with request.app[MANAGER].lease(parsed.model, ttl=parsed.ttl) as inst:
        _require_llm(inst)
        engine_request = CompletionRequest(parsed.prompt, parsed.params)
        if parsed.stream:
            return await _stream(
                request,
                inst,
                engine_request,
                chat=False,
                include_usage=parsed.include_usage,
                want_logprobs=parsed.params.logprobs,
                v0=v0,
            )
        generated = await _collect(inst, engine_request)
        body_out = render.text_completion(
            inst.identifier,
            generated,
            want_logprobs=parsed.params.logprobs,
            prefix=parsed.prompt if parsed.echo else "",
        )
        return _json(body_out, inst, generated, v0)


def _json(
    body: dict[str, Any], inst: Instance, generated: render.Generated, v0: bool
) -> web.Response:
    if v0:
        assert inst.worker is not None and generated.done is not None
        body.update(render.lmstudio_extras(generated.done, inst.record, inst.worker.info))
    return web.json_response(body)


async def embeddings(request: web.Request, *, v0: bool) -> web.StreamResponse:
    body = await read_json_object(request)
    parsed = parse.parse_embedding(body)
    async with request.app[MANAGER].lease(parsed.model, ttl=parsed.ttl) as inst:
        if inst.record.type != "embeddings":
            raise InvalidRequest(
                f"{inst.identifier} is not an embedding model; choose one of type "
                "'embeddings' (see /api/v0/models)",
                param="model",
                code="model_not_supported",
            )
        assert inst.worker is not None
        result = await inst.worker.embed(parsed.inputs)
    model_id = inst.identifier
    if v0 and inst.record.quantization:
        model_id = f"{inst.identifier}@{inst.record.quantization.lower()}"
    return web.json_response(render.embeddings(model_id, result.vectors, result.prompt_tokens))


def add_routes(app: web.Application) -> None:
    for prefix, v0 in (("/v1", False), ("/api/v0", True)):

        def bind(handler: Any, v0: bool = v0) -> Any:
            async def route(request: web.Request) -> web.StreamResponse:
                return await handler(request, v0=v0)  # type: ignore[no-any-return]

            return route

        app.router.add_post(f"{prefix}/chat/completions", bind(chat_completions))
        app.router.add_post(f"{prefix}/completions", bind(completions))
        app.router.add_post(f"{prefix}/embeddings", bind(embeddings))
