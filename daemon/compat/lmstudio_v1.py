"""LM Studio's native REST API v1 (`/api/v1/*`, LM Studio 0.4): the model listing, the chat
request, its response, its named stream events and its error body. Pure: no I/O.

    POST /api/v1/chat {model, input, system_prompt?, previous_response_id?, store?, ...}
      -> {model_instance_id, output: [{type: "reasoning"|"message", content}], stats,
          response_id?}

Streaming: `event: <type>` + `data: {"type": <type>, ...}`, from `chat.start` to
`chat.end {result: <the non-streamed body>}` (or an `error` event). See docs/rest-v1.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from daemon.catalog import ModelRecord
from daemon.compat.durations import request_ttl
from daemon.compat.errors import ErrorInfo
from daemon.compat.fields import in_range, optional, required
from daemon.compat.images import image_from_url
from daemon.engines.base import GenerationParams
from daemon.errors import InvalidRequest
from daemon.instance import LoadRequest
from daemon.model_keys import bits_per_weight
from daemon.prediction.types import (
    ContentPart,
    Message,
    Prediction,
    PredictionDone,
    PredictionEvent,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    TextPart,
)

REASONING_OPTIONS = ("off", "low", "medium", "high", "on")

# LM Studio v1's error types.
ErrorType = Literal[
    "invalid_request", "unknown", "not_implemented", "model_not_found", "internal_error"
]


# -- errors ---------------------------------------------------------------------------------


def v1_error(error: ErrorInfo) -> dict[str, Any]:
    """`{"error": {"type", "message", "code"?, "param"?}}`, LM Studio v1's error body."""
    kind: ErrorType
    if error.code == "model_not_found":
        kind = "model_not_found"
    elif error.code == "not_implemented":
        kind = "not_implemented"
    elif error.status >= 500:
        kind = "internal_error"
    else:
        kind = "invalid_request"
    body: dict[str, Any] = {"type": kind, "message": error.message}
    if error.code is not None:
        body["code"] = error.code
    if error.param is not None:
        body["param"] = error.param
    return {"error": body}


# -- GET /api/v1/models ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedInstance:
    """One loaded instance of a model, as the listing shows it."""

    id: str
    context_length: int
    parallel: int


def model_item(record: ModelRecord, key: str, loaded: list[LoadedInstance]) -> dict[str, Any]:
    """One item of `GET /api/v1/models` (LM Studio 0.4's shape)."""
    embedding = record.type == "embeddings"
    quantization = None
    if record.quantization:
        quantization = {
            "name": record.quantization,
            "bits_per_weight": bits_per_weight(record.quantization),
        }
    item: dict[str, Any] = {
        "type": "embedding" if embedding else "llm",
        "publisher": record.publisher,
        "key": key,
        "display_name": record.display_name,
        "architecture": record.arch,
        "quantization": quantization,
        "size_bytes": record.size_bytes,
        "params_string": record.params_string,
        "loaded_instances": [
            {
                "id": inst.id,
                "config": {"context_length": inst.context_length, "parallel": inst.parallel},
            }
            for inst in loaded
        ],
        "max_context_length": record.max_context_length,
        "format": record.format,
    }
    if not embedding:
        item["capabilities"] = {
            "vision": record.type == "vlm",
            "trained_for_tool_use": "tool_use" in record.capabilities,
        }
    return item


# -- POST /api/v1/chat: the request ---------------------------------------------------------


@dataclass(frozen=True)
class ParsedChat:
    model: str
    input: tuple[Message, ...]  # the new user turn
    system_prompt: str | None
    params: GenerationParams
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    context_length: int | None = None  # for a just-in-time load
    reasoning: str | None = None
    ttl: float | None = None

    def prediction(self, history: tuple[Message, ...] = ()) -> Prediction:
        """The prediction for this turn after `history` (a stored conversation)."""
        return Prediction(
            model=self.model,
            messages=conversation(history, self.system_prompt, self.input),
            params=self.params,
            ttl=self.ttl,
            load=LoadRequest(context_length=self.context_length),
            separate_reasoning=True,  # v1 always reports reasoning as its own output item
        )


def conversation(
    history: tuple[Message, ...], system_prompt: str | None, new: tuple[Message, ...]
) -> tuple[Message, ...]:
    """The messages of a turn: a given system prompt replaces the stored one."""
    if system_prompt is None:
        return history + new
    kept = tuple(m for m in history if m.role != "system")
    return (Message("system", (_text(system_prompt),)), *kept, *new)


def _text(text: str) -> TextPart:
    return TextPart(text)


def _input(raw: Any) -> tuple[Message, ...]:
    if isinstance(raw, str):
        return (Message("user", (_text(raw),)),)
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of input items",
            param="input",
            code="invalid_type" if raw is not None else "missing_required_parameter",
        )
    parts: list[ContentPart] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise InvalidRequest(
                f"'{where}' must be an object with a 'type'", param="input", code="invalid_type"
            )
        kind = item["type"]
        if kind in ("message", "text"):
            content = item.get("content")
            if content is None:
                content = item.get("text")
            if not isinstance(content, str):
                raise InvalidRequest(
                    f"'{where}.content' must be a string", param="input", code="invalid_type"
                )
            parts.append(_text(content))
        elif kind == "image":  # {"type": "image", "data_url": "data:image/png;base64,..."}
            parts.append(image_from_url(item.get("data_url"), param=f"{where}.data_url"))
        else:
            raise InvalidRequest(
                f'\'{where}.type\' must be "message" (or "text"), not {kind!r}',
                param="input",
                code="invalid_value",
            )
    return (Message("user", tuple(parts)),)


def _params(body: dict[str, Any]) -> GenerationParams:
    defaults = GenerationParams()
    temperature = optional(body, "temperature", float)
    in_range("temperature", temperature, 0, 2)
    top_p = optional(body, "top_p", float)
    in_range("top_p", top_p, 0, 1)
    top_k = optional(body, "top_k", int)
    in_range("top_k", top_k, 0, 1_000_000)
    min_p = optional(body, "min_p", float)
    in_range("min_p", min_p, 0, 1)
    repeat = optional(body, "repeat_penalty", float)
    in_range("repeat_penalty", repeat, 0, 10)
    max_tokens = optional(body, "max_output_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(
            "'max_output_tokens' must be at least 1",
            param="max_output_tokens",
            code="invalid_value",
        )
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        min_p=defaults.min_p if min_p is None else min_p,
        repeat_penalty=defaults.repeat_penalty if repeat is None else repeat,
    )


def parse_chat(body: dict[str, Any]) -> ParsedChat:
    """`POST /api/v1/chat`'s body; a 400 naming the field for anything wrong."""
    model = required(body, "model", str)
    if "input" not in body:
        raise InvalidRequest(
            "'input' is required", param="input", code="missing_required_parameter"
        )
    integrations = body.get("integrations")
    if integrations:
        raise InvalidRequest(
            "'integrations' (MCP servers, plugins) are not implemented by this server",
            param="integrations",
            code="not_implemented",
        )
    context_length = optional(body, "context_length", int)
    if context_length is not None and context_length < 1:
        raise InvalidRequest(
            "'context_length' must be at least 1", param="context_length", code="invalid_value"
        )
    reasoning = optional(body, "reasoning", str)
    if reasoning is not None and reasoning not in REASONING_OPTIONS:
        raise InvalidRequest(
            "'reasoning' must be one of " + ", ".join(REASONING_OPTIONS),
            param="reasoning",
            code="invalid_value",
        )
    store = optional(body, "store", bool)
    return ParsedChat(
        model=model,
        input=_input(body["input"]),
        system_prompt=optional(body, "system_prompt", str),
        params=_params(body),
        previous_response_id=optional(body, "previous_response_id", str),
        store=True if store is None else store,
        stream=bool(optional(body, "stream", bool)),
        context_length=context_length,
        reasoning=reasoning,
        ttl=request_ttl(body),
    )


# -- POST /api/v1/chat: the response --------------------------------------------------------


def chat_result(
    model_instance_id: str,
    done: PredictionDone,
    *,
    reasoning_tokens: int = 0,
    load_seconds: float | None = None,
    response_id: str | None = None,
) -> dict[str, Any]:
    """The non-streamed body (and `chat.end`'s `result`)."""
    output: list[dict[str, Any]] = []
    if done.reasoning:
        output.append({"type": "reasoning", "content": done.reasoning})
    output.append({"type": "message", "content": done.text})
    stats = done.stats
    out_stats: dict[str, Any] = {
        "input_tokens": stats.prompt_tokens,
        "total_output_tokens": stats.completion_tokens,
        "reasoning_output_tokens": min(reasoning_tokens, stats.completion_tokens),
        "tokens_per_second": stats.tokens_per_second,
        "time_to_first_token_seconds": round(stats.time_to_first_token, 3),
    }
    if load_seconds is not None:
        out_stats["model_load_time_seconds"] = round(load_seconds, 3)
    body: dict[str, Any] = {
        "model_instance_id": model_instance_id,
        "output": output,
        "stats": out_stats,
    }
    if response_id is not None:
        body["response_id"] = response_id
    return body


def answer_message(done: PredictionDone) -> Message:
    """The model's answer as a message of the stored conversation."""
    return Message("assistant", (_text(done.text),))


StreamItem = tuple[str, dict[str, Any]]  # (event name, data)


def _item(name: str, **data: Any) -> StreamItem:
    return name, {"type": name, **data}


@dataclass
class EventStream:
    """Prediction events -> LM Studio v1's named stream events. `start()` first; `event()`
    for each event before the last; `end(result)` or `failed(error_body)` last."""

    model_instance_id: str
    reasoning_tokens: int = 0  # reasoning fragments seen (about one per token)
    _block: str | None = None  # "reasoning" or "message" while one is open
    _prompt_done: bool = False

    def start(
        self, load_seconds: float | None = None, *, load_streamed: bool = False
    ) -> list[StreamItem]:
        """The stream's first events; `load_streamed`: `loading()` and `load_progress()`
        have already told the start of the load and its progress."""
        items = [] if load_streamed else self.opening()
        if load_seconds is not None or load_streamed:
            if not load_streamed:
                items.append(_item("model_load.start", model_instance_id=self.model_instance_id))
            items.append(
                _item(
                    "model_load.end",
                    model_instance_id=self.model_instance_id,
                    load_time_seconds=round(load_seconds or 0.0, 3),
                )
            )
        items.append(_item("prompt_processing.start"))
        return items

    def opening(self) -> list[StreamItem]:
        return [_item("chat.start", model_instance_id=self.model_instance_id)]

    def load_started(self) -> list[StreamItem]:
        """The opening events of a stream that waits for its model to load."""
        return [
            *self.opening(),
            _item("model_load.start", model_instance_id=self.model_instance_id),
        ]

    def load_progress(self, progress: float) -> list[StreamItem]:
        return [
            _item(
                "model_load.progress",
                model_instance_id=self.model_instance_id,
                progress=round(progress, 4),
            )
        ]

    def event(self, event: PredictionEvent) -> list[StreamItem]:
        if isinstance(event, PromptProgress):
            items = [_item("prompt_processing.progress", progress=event.fraction)]
            if event.fraction >= 1.0 and not self._prompt_done:
                self._prompt_done = True
                items.append(_item("prompt_processing.end"))
            return items
        if isinstance(event, ReasoningFragment):
            self.reasoning_tokens += 1
            return [*self._open("reasoning"), _item("reasoning.delta", content=event.text)]
        if isinstance(event, TextFragment) and event.text:
            return [*self._open("message"), _item("message.delta", content=event.text)]
        return []  # tool calls: no tools are given on this endpoint

    def end(self, result: dict[str, Any]) -> list[StreamItem]:
        return [*self._close(), _item("chat.end", result=result)]

    def failed(self, error_body: dict[str, Any]) -> list[StreamItem]:
        return [*self._close(), _item("error", error=error_body["error"])]

    def _finish_prompt(self) -> list[StreamItem]:
        if self._prompt_done:
            return []
        self._prompt_done = True
        return [_item("prompt_processing.end")]

    def _open(self, block: str) -> list[StreamItem]:
        if self._block == block:
            return []
        return self._finish_prompt() + self._close() + [self._set(block)]

    def _set(self, block: str) -> StreamItem:
        self._block = block
        return _item(f"{block}.start")

    def _close(self) -> list[StreamItem]:
        if self._block is None:
            return []
        block, self._block = self._block, None
        return [_item(f"{block}.end")]
