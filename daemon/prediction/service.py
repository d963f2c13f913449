"""The prediction service: the one inference core every API surface calls.

    async with service.predict(prediction) as run:
        async for event in run.events: ...       # PredictionEvent (types.py)

It owns, for every surface alike: leasing the model (just-in-time loads, backpressure),
what `lms ps` shows while it runs (through the lease: the manager owns the counts),
cancellation (leaving the block, or a client going away, closes the engine's stream and
the engine stops within a token), wiring tools into the prompt and parsing calls out of
the text, separating reasoning, the stats, the metrics and the log events.

Errors: the stream raises a typed LmsError before its first event (the surface answers
with an error status); after that, it ends with one `PredictionFailed` instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from daemon.catalog import ModelRecord
from daemon.engines import images
from daemon.engines.base import (
    IMAGE_MARKER,
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationRequest,
    TokenEvent,
)
from daemon.errors import InvalidRequest, LmsError, PayloadTooLarge
from daemon.events import EventBus, done_stats, prediction_input, prediction_output
from daemon.instance import Instance, LoadRequest
from daemon.manager import ModelManager, OnLoadProgress, Phase
from daemon.metrics import Metrics
from daemon.prediction import reasoning, schema_limits, tools
from daemon.prediction.image_urls import ImageFetcher, resolve_image_urls
from daemon.prediction.types import (
    EmbeddingRequest,
    ImagePart,
    Message,
    ModelUsed,
    Prediction,
    PredictionDone,
    PredictionEvent,
    PredictionFailed,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    TextPart,
    ToolCall,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallFailed,
    ToolCallStarted,
)
from daemon.remote.router import ModelLease as Lease
from daemon.remote.router import Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    model: ModelUsed
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class PredictionRun:
    model: ModelUsed
    events: AsyncGenerator[PredictionEvent, None]


class PredictionService:
    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        events: EventBus,
        router: Router | None = None,
        image_fetcher: ImageFetcher | None = None,
    ) -> None:
        self._manager = manager
        # Fetches http(s) image URLs (the HTTP layer's; None: they are refused).
        self.image_fetcher = image_fetcher
        # Leases go through the router: local instances, or remote upstreams (issue 17).
        self._leases = router or manager
        self._metrics = metrics
        self._events = events

    @contextlib.asynccontextmanager
    async def predict(
        self, prediction: Prediction, *, on_load_progress: OnLoadProgress | None = None
    ) -> AsyncIterator[PredictionRun]:
        """Runs a prediction; `on_load_progress` hears a just-in-time load it waits for."""
        load = prediction.load or LoadRequest()
        settings = self._manager.settings
        prediction = await resolve_image_urls(prediction, settings, self.image_fetcher)
        await check_images(prediction, settings.max_image_bytes)

        def check(record: ModelRecord, identifier: str) -> None:
            _require_llm(record, identifier)
            _require_vision(record, identifier, prediction)

        def heard(inst: Instance, progress: float) -> None:
            check(inst.record, inst.identifier)  # refused before anything is sent
            if on_load_progress is not None:
                on_load_progress(inst, progress)

        async with self._leases.lease(
            prediction.model,
            ttl=prediction.ttl,
            request=load,
            on_progress=heard if on_load_progress is not None else None,
        ) as lease:
            check(lease.record, lease.identifier)
            request, parser = _engine_request(lease, prediction)
            separate = prediction.separate_reasoning
            if separate is None:
                separate = self._manager.settings.separate_reasoning
            splitter = await _reasoning_splitter(lease, request) if separate else None
            events = self._run(lease, prediction, request, parser, splitter)
            try:
                yield PredictionRun(model_used(lease), events)
            finally:
                await events.aclose()

    async def embed(self, request: EmbeddingRequest) -> Embedded:
        async with self._leases.lease(request.model, ttl=request.ttl) as lease:
            if lease.record.type != "embeddings":
                raise InvalidRequest(
                    f"{lease.identifier} is not an embedding model; choose one of type "
                    "'embeddings' (see /api/v0/models)",
                    param="model",
                    code="model_not_supported",
                )
            result = await lease.engine.embed(list(request.inputs))
            return Embedded(model_used(lease), result.vectors, result.prompt_tokens)

    async def _run(
        self,
        lease: Lease,
        prediction: Prediction,
        request: GenerationRequest,
        parser: tools.ToolCallParser | None,
        splitter: reasoning.ReasoningSplitter | None,
    ) -> AsyncGenerator[PredictionEvent, None]:
        self._events.publish(
            prediction_input(lease.identifier, lease.record.path, _input_text(prediction))
        )
        lease.phase(Phase.PROMPT)
        output = _Output(parser, splitter, want_tokens=prediction.params.logprobs)
        started = False
        stream = lease.engine.generate(request)
        try:
            async for event in stream:
                if not started:
                    started = True
                    lease.phase(Phase.GENERATING)
                    yield PromptProgress(1.0)
                if isinstance(event, DoneEvent):
                    done = output.done(event)
                    for item in output.pending:
                        yield item
                    self._metrics.generation(lease.identifier, event)
                    stats = done_stats(event)
                    self._events.publish(prediction_output(lease.identifier, output.raw, stats))
                    yield done
                    return
                for item in output.token(event):
                    yield item
            raise LmsError("the generation ended without a result")
        except LmsError as exc:
            if not started:
                raise
            log.warning("prediction on %s ended with an error: %s", lease.identifier, exc)
            yield PredictionFailed(exc)
        finally:
            await stream.aclose()


class _Output:
    """Turns the engine's tokens into prediction events: reasoning split off, tool calls
    parsed out, the rest text; and gathers what the final event reports."""

    def __init__(
        self,
        parser: tools.ToolCallParser | None,
        splitter: reasoning.ReasoningSplitter | None,
        *,
        want_tokens: bool,
    ) -> None:
        self.parser = parser
        self.splitter = splitter
        self.want_tokens = want_tokens
        self.raw = ""  # everything the model said, for the log stream
        self.text = ""
        self.reasoning = ""
        self.tokens: list[TokenEvent] = []
        self.calls: list[ToolCall] = []
        self.pending: list[PredictionEvent] = []

    def token(self, event: TokenEvent) -> list[PredictionEvent]:
        self.raw += event.text
        if event.token_id is not None and self.want_tokens:
            self.tokens.append(event)
        if self.parser is None and self.splitter is None:
            # Nothing is rewritten: each token goes out as it came, logprobs and all.
            self.text += event.text
            if event.text or event.token_id is not None:
                return [TextFragment(event.text, event if event.token_id is not None else None)]
            return []
        if self.splitter is None:
            return self._pieces([("content", event.text)])
        return self._pieces(self.splitter.feed(event.text))

    def done(self, event: DoneEvent) -> PredictionDone:
        tail = self.splitter.finish() if self.splitter else []
        self.pending = self._pieces(tail)
        if self.parser is not None:
            self.pending += self._parsed(self.parser.finish())
        return PredictionDone(
            stats=event,
            text=self.text,
            reasoning=self.reasoning,
            tool_calls=tuple(self.calls),
            tokens=tuple(self.tokens),
        )

    def _pieces(self, pieces: list[reasoning.Piece]) -> list[PredictionEvent]:
        out: list[PredictionEvent] = []
        for kind, text in pieces:
            if kind == "reasoning":
                self.reasoning += text
                out.append(ReasoningFragment(text))
            elif self.parser is not None:
                out += self._parsed(self.parser.feed(text))
            else:
                self.text += text
                out.append(TextFragment(text))
        return out

    def _parsed(self, pieces: list[tools.Piece]) -> list[PredictionEvent]:
        out: list[PredictionEvent] = []
        for piece in pieces:
            if isinstance(piece, str):
                self.text += piece
                out.append(TextFragment(piece))
            elif isinstance(piece, tools.FailedCall):
                self.text += piece.text
                out += [ToolCallFailed(piece.text, piece.reason), TextFragment(piece.text)]
            else:
                index = len(self.calls)
                self.calls.append(piece)
                out += [
                    ToolCallStarted(index, piece.id, piece.name),
                    ToolCallArguments(index, piece.arguments),
                    ToolCallEnded(index, piece),
                ]
        return out


def model_used(lease: Lease) -> ModelUsed:
    info, record = lease.info, lease.record
    return ModelUsed(
        identifier=lease.identifier,
        model_key=record.key,
        path=record.path,
        format=record.format,
        arch=info.arch or record.arch,
        quantization=info.quant or record.quantization,
        context_length=info.context_length,
        runtime_name=info.runtime_name,
        runtime_version=info.runtime_version,
        supported_formats=tuple(info.supported_formats),
        device="GPU" if info.n_gpu_layers else "CPU",
        load_seconds=lease.load_seconds,
    )


def _require_llm(record: ModelRecord, identifier: str) -> None:
    if record.type == "embeddings":
        raise InvalidRequest(
            f"{identifier} is an embedding model: it cannot generate text; "
            "use /v1/embeddings with it, or choose a chat model",
            param="model",
            code="model_not_supported",
        )


async def check_images(prediction: Prediction, max_bytes: int) -> None:
    """Every image of the prediction is one we can read and not too large (413), checked
    before a model is leased (decoding runs off the event loop)."""
    found = [p for m in prediction.messages for p in m.images]
    for n, part in enumerate(found, start=1):
        if len(part.data) > max_bytes:
            raise PayloadTooLarge(
                f"image {n} is {len(part.data)} bytes; images of at most {max_bytes} bytes "
                "are taken (the max_image_bytes setting)",
                param="messages",
                code="image_too_large",
            )
    for n, part in enumerate(found, start=1):
        await asyncio.to_thread(images.decode, part.data, param=f"image {n}")


def _require_vision(record: ModelRecord, identifier: str, prediction: Prediction) -> None:
    if record.type != "vlm" and any(m.images for m in prediction.messages):
        raise InvalidRequest(
            f"{identifier} cannot see images: it is not a vision model (type 'vlm' in "
            "/api/v0/models); send text, or choose a vision model",
            param="messages",
            code="model_not_vision",
        )


def _content_text(message: Message, images: list[ImagePart] | None) -> str:
    """The message's text, with IMAGE_MARKER where each image goes (collected into
    `images`), joined into one string: what every chat template can read."""
    if not message.images and not message.image_urls:
        return message.text
    if images is None:
        raise InvalidRequest(
            "images cannot be used here (only in a prediction); send text",
            param="messages",
            code="unsupported_content",
        )
    text = ""
    for part in message.content:
        if isinstance(part, ImagePart):
            images.append(part)
            text += IMAGE_MARKER
        elif isinstance(part, TextPart):
            text += part.text
        else:  # never here: the service fetches image URLs first
            raise InvalidRequest("an image URL was not fetched", param="messages")
    return text


def template_messages(
    messages: tuple[Message, ...], images: list[ImagePart] | None = None
) -> list[dict[str, Any]]:
    """Messages in the shape chat templates read (content as one string). Images stand
    as IMAGE_MARKER and go into `images` in order; without that list they are refused."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": _content_text(message, images)}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        out.append(item)
    return out


def _engine_request(
    lease: Lease, prediction: Prediction
) -> tuple[GenerationRequest, tools.ToolCallParser | None]:
    """The engine request, with tools wired in: through the model's template when it
    handles tools, else LM Studio's default format; `required` by grammar. A schema that
    becomes a grammar is bounded first (schema_limits)."""
    schema_limits.check_structured(prediction.structured, param="response_format")
    if prediction.prompt is not None:
        params = replace(prediction.params, structured=prediction.structured)
        return CompletionRequest(prediction.prompt, params), None
    parts: list[ImagePart] = []
    messages = template_messages(prediction.messages, parts)
    pictures = [base64.b64encode(p.data).decode("ascii") for p in parts]
    setup = prediction.tools if prediction.tools and prediction.tools.mode != "none" else None
    if setup is None:
        params = replace(prediction.params, structured=prediction.structured)
        return ChatRequest(messages, None, params, images=pictures), None
    if setup.mode == "required" and prediction.structured is not None:
        raise InvalidRequest(
            "structured output cannot be combined with a required tool call",
            param="response_format",
        )
    native = "tool_use" in lease.record.capabilities
    structured = (
        tools.call_constraint(setup, native=native)
        if setup.mode == "required"
        else prediction.structured
    )
    if setup.mode == "required":
        schema_limits.check_structured(structured, param="tools")
    params = replace(prediction.params, structured=structured)
    parser = tools.ToolCallParser(setup.names, bare=setup.mode == "required")
    if native:
        return ChatRequest(messages, setup.tools, params, images=pictures), parser
    fallback = tools.fallback_messages(messages, setup)
    return ChatRequest(fallback, None, params, images=pictures), parser


async def _reasoning_splitter(
    lease: Lease, request: GenerationRequest
) -> reasoning.ReasoningSplitter | None:
    """A splitter for a thinking model's chat (None: the text stays as it is)."""
    if not isinstance(request, ChatRequest):
        return None
    gguf = lease.record.gguf
    if not reasoning.template_thinks(gguf.chat_template if gguf else None):
        return None
    prompt = await lease.engine.render_chat(request.messages, request.tools)
    return reasoning.ReasoningSplitter(inside=reasoning.opens_thought(prompt))


def _input_text(prediction: Prediction) -> str:
    """The input as readable text for the log stream (the daemon does not see the
    templated prompt): a completion's prompt, or one `role: text` block per message."""
    if isinstance(prediction.prompt, list):
        return f"[{len(prediction.prompt)} token ids]"
    if prediction.prompt is not None:
        return prediction.prompt
    return "\n\n".join(
        f"{m.role}: {m.text}" + "".join(f"[image {p.mime_type}]" for p in m.images)
        for m in prediction.messages
    )
