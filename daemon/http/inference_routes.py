"""Chat, completions and embeddings for both API families. `/v1` (OpenAI) and `/api/v0`
(LM Studio) share every step; v0 only adds `stats`, `model_info` and `runtime`."""

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from aiohttp import web

from daemon.compat import requests as parse
from daemon.compat import responses as render
from daemon.compat import tools
from daemon.compat.tools import Piece, ToolCallParser
from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationRequest,
    StreamEvent,
    TokenEvent,
)
from daemon.errors import InvalidRequest, LmsError
from daemon.events import EventBus, done_stats, input_text, prediction_input, prediction_output
from daemon.http import sse
from daemon.http.errors import read_json_object
from daemon.http.keys import EVENTS, MANAGER, METRICS
from daemon.instance import Instance
from daemon.metrics import Metrics

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
    inst: Instance, request: GenerationRequest, events: EventBus
) -> AsyncIterator[tuple[AsyncGenerator[StreamEvent, None], _Phase]]:
    """The instance's event stream, counted in its status, always closed (a client that
    goes away cancels the generation in the worker)."""
    assert inst.worker is not None
    stream = inst.worker.generate(request)
    events.publish(prediction_input(inst.identifier, inst.record.path, input_text(request)))
    phase = _Phase(inst)
    try:
        yield stream, phase
    finally:
        phase.end()
        await stream.aclose()


async def _collect(
    inst: Instance, request: GenerationRequest, metrics: Metrics, events: EventBus
) -> render.Generated:
    generated = render.Generated()
    async with _events(inst, request, events) as (stream, phase):
        async for event in stream:
            phase.generating()
            if isinstance(event, DoneEvent):
                generated.done = event
                metrics.generation(inst.identifier, event)
                events.publish(
                    prediction_output(inst.identifier, generated.text, done_stats(event))
                )
                return generated
            generated.add(event)
    raise LmsError("the generation ended without a result")


class _Emitter:
    """Writes one streamed completion as OpenAI chunks; with tools, routes text through
    the tool-call parser so calls go out as `tool_calls` deltas, not as content."""

    def __init__(
        self,
        response: web.StreamResponse,
        ids: tuple[str, str, int],
        *,
        chat: bool,
        want_logprobs: bool,
        parser: ToolCallParser | None,
    ) -> None:
        self.response = response
        self.ids = ids
        self.chat = chat
        self.want_logprobs = want_logprobs and parser is None
        self.parser = parser

    async def token(self, event: TokenEvent) -> None:
        if self.parser is not None:
            await self.pieces(self.parser.feed(event.text))
            return
        with_logprobs = self.want_logprobs and event.token_id is not None
        if not event.text and not with_logprobs:
            return  # held back (a possible stop string); nothing to say yet
        logprobs = None
        if with_logprobs:
            logprobs = (render.chat_logprobs if self.chat else render.completion_logprobs)([event])
        await self.text(event.text, logprobs)

    async def text(self, text: str, logprobs: dict[str, Any] | None = None) -> None:
        if self.chat:
            chunk = render.chat_chunk(*self.ids, delta={"content": text}, logprobs=logprobs)
        else:
            chunk = render.text_chunk(*self.ids, text=text, logprobs=logprobs)
        await sse.send(self.response, chunk)

    async def pieces(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            if isinstance(piece, str):
                await self.text(piece)
                continue
            index = self.parser.calls.index(piece) if self.parser else 0
            start = {
                "index": index,
                "id": piece.id,
                "type": "function",
                "function": {"name": piece.name, "arguments": ""},
            }
            arguments = {"index": index, "function": {"arguments": piece.arguments}}
            for delta in (start, arguments):
                await sse.send(
                    self.response, render.chat_chunk(*self.ids, delta={"tool_calls": [delta]})
                )

    async def finish(self) -> bool:
        """Flushes held-back text; True when the model made tool calls."""
        if self.parser is None:
            return False
        await self.pieces(self.parser.finish())
        return bool(self.parser.calls)


async def _stream(
    http_request: web.Request,
    inst: Instance,
    request: GenerationRequest,
    *,
    chat: bool,
    include_usage: bool,
    want_logprobs: bool,
    v0: bool,
    parser: ToolCallParser | None = None,
) -> web.StreamResponse:
    model_id = inst.identifier
    ids = (render.new_id("chatcmpl" if chat else "cmpl"), model_id, int(time.time()))
    events = http_request.app[EVENTS]
    said: list[str] = []  # what the client was sent, for the log stream
    async with _events(inst, request, events) as (stream, phase):
        # Errors before any output (a prompt longer than the context, ...) stay plain HTTP
        # errors: the stream's headers go out only once the first token is there.
        event = await anext(stream)
        phase.generating()
        response = await sse.open_stream(http_request)
        emit = _Emitter(response, ids, chat=chat, want_logprobs=want_logprobs, parser=parser)
        try:
            if chat:
                role = {"role": "assistant", "content": ""}
                await sse.send(response, render.chat_chunk(*ids, delta=role))
            while isinstance(event, TokenEvent):
                said.append(event.text)
                await emit.token(event)
                event = await anext(stream)
            done = event
            http_request.app[METRICS].generation(model_id, done)
            events.publish(prediction_output(model_id, "".join(said), done_stats(done)))
            called = await emit.finish()
            finish = render.finish_reason(done, tool_calls=called)
            if chat:
                last = render.chat_chunk(*ids, delta={}, finish=finish)
            else:
                last = render.text_chunk(*ids, text="", finish=finish)
            if v0:
                assert inst.worker is not None
                last.update(
                    render.lmstudio_extras(
                        done,
                        inst.record,
                        inst.worker.info,
                        stop_reason="toolCalls" if called else None,
                    )
                )
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


def _chat_request(
    inst: Instance, parsed: parse.ParsedChat
) -> tuple[ChatRequest, ToolCallParser | None]:
    """The engine request for a chat, with tools wired in: through the model's template
    when it handles tools, else LM Studio's default format; `required` by grammar."""
    setup = parsed.tools if parsed.tools is not None and parsed.tools.mode != "none" else None
    if setup is None:
        params = replace(parsed.params, structured=parsed.structured)
        return ChatRequest(parsed.messages, None, params), None
    if setup.mode == "required" and parsed.structured is not None:
        raise InvalidRequest(
            "'response_format' cannot be combined with a required tool call",
            param="response_format",
        )
    native = "tool_use" in inst.record.capabilities
    structured = (
        tools.call_constraint(setup, native=native)
        if setup.mode == "required"
        else parsed.structured
    )
    params = replace(parsed.params, structured=structured)
    if native:
        return ChatRequest(parsed.messages, setup.tools, params), ToolCallParser(setup.names)
    messages = tools.fallback_messages(parsed.messages, setup)
    return ChatRequest(messages, None, params), ToolCallParser(setup.names)


async def chat_completions(request: web.Request, *, v0: bool) -> web.StreamResponse:
    body = await read_json_object(request)
    parsed = parse.parse_chat(body)
    async with request.app[MANAGER].lease(parsed.model, ttl=parsed.ttl) as inst:
        _require_llm(inst)
        engine_request, parser = _chat_request(inst, parsed)
        if parsed.stream:
            return await _stream(
                request,
                inst,
                engine_request,
                chat=True,
                include_usage=parsed.include_usage,
                want_logprobs=parsed.params.logprobs,
                v0=v0,
                parser=parser,
            )
        generated = await _collect(inst, engine_request, request.app[METRICS], request.app[EVENTS])
        calls: list[dict[str, Any]] = []
        if parser is not None:
            pieces = parser.feed(generated.text) + parser.finish()
            generated.text = "".join(p for p in pieces if isinstance(p, str))
            calls = [call.to_openai() for call in parser.calls]
        body_out = render.chat_completion(
            inst.identifier,
            generated,
            want_logprobs=parsed.params.logprobs,
            tool_calls=calls or None,
        )
        return _json(body_out, inst, generated, v0, stop_reason="toolCalls" if calls else None)


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
        generated = await _collect(inst, engine_request, request.app[METRICS], request.app[EVENTS])
        body_out = render.text_completion(
            inst.identifier,
            generated,
            want_logprobs=parsed.params.logprobs,
            prefix=parsed.prompt if parsed.echo else "",
        )
        return _json(body_out, inst, generated, v0)


def _json(
    body: dict[str, Any],
    inst: Instance,
    generated: render.Generated,
    v0: bool,
    *,
    stop_reason: str | None = None,
) -> web.Response:
    if v0:
        assert inst.worker is not None and generated.done is not None
        body.update(
            render.lmstudio_extras(
                generated.done, inst.record, inst.worker.info, stop_reason=stop_reason
            )
        )
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
