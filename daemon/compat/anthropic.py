"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) <-> the
prediction service: a request body -> `Prediction`, prediction events -> the Message
object or its stream of named events, and Anthropic's error body. Pure: no I/O.

    {"model", "max_tokens", "system", "messages": [{"role", "content": [blocks]}],
     "tools": [{"name", "description", "input_schema"}], "tool_choice", ...}

Content blocks in: `text`; `image` (a base64 source) on user turns; `tool_use` on
assistant turns (earlier calls), `tool_result` on user turns (each one a `tool` message);
`thinking`/`redacted_thinking` in history are dropped (the chat template decides what a
model sees of its earlier thoughts). Documents are refused with a 400 for now.

Blocks out, in the order the model produced them: `thinking` (reasoning, when the daemon
separates it; `signature` is always ""), `text`, `tool_use` (`id` "toolu_…").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.compat.durations import request_ttl
from daemon.compat.errors import ErrorInfo
from daemon.compat.fields import in_range, optional, required
from daemon.compat.images import image_from_base64, web_image
from daemon.engines.base import GenerationParams, StopReason
from daemon.errors import InvalidRequest
from daemon.prediction.types import (
    ContentPart,
    ImagePart,
    ImageUrl,
    Message,
    Prediction,
    PredictionDone,
    PredictionEvent,
    ReasoningFragment,
    TextFragment,
    TextPart,
    ToolCall,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallStarted,
    ToolMode,
    ToolSetup,
)

MAX_STOP_SEQUENCES = 16
UNSUPPORTED_BLOCKS = {"document", "search_result", "container_upload"}
DROPPED_BLOCKS = {"thinking", "redacted_thinking"}


@dataclass(frozen=True)
class ParsedMessages:
    prediction: Prediction
    stream: bool


# -- errors ---------------------------------------------------------------------------------

# HTTP status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # busy or unloading: Anthropic's 529, retried by its SDKs
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error(error: ErrorInfo) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`: Anthropic's error body."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(error.status), "message": error.message},
    }


# -- request --------------------------------------------------------------------------------


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a list of block objects (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _invalid(
            f"'{where}' must be a string or an array of content blocks", where, "invalid_type"
        )
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _invalid(
                f"'{where}[{j}]' must be a content block object with a 'type'",
                where,
                "invalid_type",
            )
    return content


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"'{where}.text' must be a string", where, "invalid_type")
    return text


def _image(block: dict[str, Any], where: str) -> ImagePart | ImageUrl:
    """An image block with a base64 source, or a URL source (fetched by the service when
    the image_urls setting allows it)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _invalid(f"'{where}.source' must be an object", where, "invalid_type")
    if source.get("type") == "url":
        return web_image(source.get("url"), param=f"{where}.source.url")
    if source.get("type") != "base64":
        raise _invalid(f'\'{where}.source.type\' must be "base64" or "url"', where, "invalid_value")
    return image_from_base64(
        source.get("data"), source.get("media_type"), param=f"{where}.source.data"
    )


def _unsupported(kind: str, where: str) -> InvalidRequest:
    if kind == "image":
        return _invalid(
            f"'{where}' is an image block: images go only in user messages", where, "invalid_value"
        )
    if kind in UNSUPPORTED_BLOCKS:
        message = (
            f"'{where}' is a content block of type {kind!r}: this server cannot send "
            "documents to a model yet; send text (or images, in user messages)"
        )
    else:
        message = f"'{where}' has an unsupported content block type {kind!r}"
    return _invalid(message, where, "unsupported_content")


def parse_system(raw: Any) -> tuple[Message, ...]:
    """`system`: a string or text blocks -> one system message (none when empty)."""
    if raw is None:
        return ()
    texts = []
    for j, block in enumerate(_blocks(raw, "system")):
        if block["type"] != "text":
            raise _unsupported(block["type"], f"system[{j}]")
        texts.append(_text_of(block, f"system[{j}]"))
    text = "\n\n".join(t for t in texts if t)
    return (Message("system", (TextPart(text),)),) if text else ()


def _tool_result_text(block: dict[str, Any], where: str) -> str:
    content = block.get("content")
    if content is None:
        return ""
    texts = []
    for j, part in enumerate(_blocks(content, f"{where}.content")):
        if part["type"] != "text":
            raise _unsupported(part["type"], f"{where}.content[{j}]")
        texts.append(_text_of(part, f"{where}.content[{j}]"))
    return "\n".join(texts)


def _user_messages(blocks: list[dict[str, Any]], where: str) -> list[Message]:
    """A user turn: text blocks gather into user messages, each tool_result becomes a
    tool message, in the order they came."""
    out: list[Message] = []
    parts: list[ContentPart] = []

    def flush() -> None:
        if parts:
            out.append(Message("user", tuple(parts)))
            parts.clear()

    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = block["type"]
        if kind == "text":
            parts.append(TextPart(_text_of(block, at)))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            flush()
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise _invalid(f"'{at}.tool_use_id' must be a string", at, "invalid_type")
            text = _tool_result_text(block, at)
            out.append(Message("tool", (TextPart(text),), tool_call_id=tool_use_id))
        elif kind in DROPPED_BLOCKS:
            continue
        elif kind == "tool_use":
            raise _invalid(f"'{at}': tool_use blocks belong to assistant messages", at)
        else:
            raise _unsupported(kind, at)
    flush()
    return out


def _assistant_message(blocks: list[dict[str, Any]], where: str) -> Message:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = block["type"]
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            name, call_input = block.get("name"), block.get("input", {})
            if not isinstance(name, str) or not name:
                raise _invalid(f"'{at}.name' must be a string", at, "invalid_type")
            try:
                arguments = json.dumps(call_input)
            except (TypeError, ValueError):
                raise _invalid(f"'{at}.input' must be JSON data", at, "invalid_type") from None
            call_id = block.get("id")
            calls.append(ToolCall(call_id if isinstance(call_id, str) else "", name, arguments))
        elif kind in DROPPED_BLOCKS:
            continue
        elif kind == "tool_result":
            raise _invalid(f"'{at}': tool_result blocks belong to user messages", at)
        else:
            raise _unsupported(kind, at)
    content = (TextPart("".join(texts)),) if texts else ()
    return Message("assistant", content, tool_calls=tuple(calls))


def parse_messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise _invalid(
            "'messages' must be a non-empty array of messages",
            "messages",
            "invalid_type" if raw else "missing_required_parameter",
        )
    out: list[Message] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"'{where}' must be an object", where, "invalid_type")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _invalid(
                f"'{where}.role' must be 'user' or 'assistant' (the system prompt goes in "
                "'system')",
                f"{where}.role",
            )
        if "content" not in message:
            raise _invalid(
                f"'{where}.content' is required", f"{where}.content", "missing_required_parameter"
            )
        blocks = _blocks(message["content"], f"{where}.content")
        if role == "user":
            out += _user_messages(blocks, f"{where}.content")
        else:
            out.append(_assistant_message(blocks, f"{where}.content"))
    return tuple(out)


def parse_tools(tools: Any, tool_choice: Any) -> ToolSetup | None:
    """Anthropic's tools -> the template shape; tool_choice -> the mode and names."""
    if tool_choice is not None and (
        not isinstance(tool_choice, dict)
        or not isinstance(tool_choice.get("type"), str)
        or tool_choice["type"] not in TOOL_CHOICES
    ):
        raise _invalid(
            '\'tool_choice\' must be {"type": "auto"}, {"type": "any"}, '
            '{"type": "tool", "name": ...} or {"type": "none"}',
            "tool_choice",
        )
    kind = tool_choice["type"] if tool_choice else "auto"
    if tools is None or tools == []:
        if kind not in ("auto", "none"):
            raise _invalid("'tool_choice' needs 'tools'", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise _invalid("'tools' must be an array", "tools", "invalid_type")
    template_tools: list[dict[str, Any]] = []
    names: list[str] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid(f"'{where}' must be an object", where, "invalid_type")
        if tool.get("type") not in (None, "custom"):
            raise _invalid(
                f"'{where}' is a server tool of type {tool.get('type')!r}, which this server "
                'does not run; send client tools ({"name", "description", "input_schema"})',
                where,
                "unsupported_tool",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"'{where}.name' must be a non-empty string", where, "invalid_type")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _invalid(
                f"'{where}.input_schema' must be a JSON schema object", where, "invalid_type"
            )
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise _invalid(f"'{where}.description' must be a string", where, "invalid_type")
        function: dict[str, Any] = {"name": name}
        if description:
            function["description"] = description
        function["parameters"] = schema
        template_tools.append({"type": "function", "function": function})
        names.append(name)
    mode: ToolMode = TOOL_CHOICES[kind]
    if kind == "tool":
        name = tool_choice.get("name") if tool_choice else None
        if not isinstance(name, str) or name not in names:
            raise _invalid(f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
        return ToolSetup(mode, template_tools, [name])
    return ToolSetup(mode, template_tools, names)


TOOL_CHOICES: dict[str, ToolMode] = {
    "auto": "auto",
    "any": "required",
    "tool": "required",
    "none": "none",
}


def parse_params(body: dict[str, Any]) -> GenerationParams:
    defaults = GenerationParams()
    max_tokens = required(body, "max_tokens", int)
    if max_tokens < 1:
        raise _invalid("'max_tokens' must be at least 1", "max_tokens")
    temperature = optional(body, "temperature", float)
    in_range("temperature", temperature, 0, 1)
    top_p = optional(body, "top_p", float)
    in_range("top_p", top_p, 0, 1)
    top_k = optional(body, "top_k", int)
    in_range("top_k", top_k, 0, 1_000_000)
    stop = optional(body, "stop_sequences", list) or []
    if len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise _invalid(
            f"'stop_sequences' must be an array of up to {MAX_STOP_SEQUENCES} non-empty strings",
            "stop_sequences",
        )
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        stop=list(stop),
    )


def _accepted(body: dict[str, Any]) -> None:
    """Fields taken and checked for their type, with no effect here."""
    optional(body, "metadata", dict)
    thinking = optional(body, "thinking", dict)
    if thinking is not None and not isinstance(thinking.get("type"), str):
        raise _invalid(
            '\'thinking\' must be {"type": "enabled", "budget_tokens": ...}, '
            '{"type": "adaptive"} or {"type": "disabled"}',
            "thinking",
        )


def parse_request(body: dict[str, Any]) -> ParsedMessages:
    """A `POST /v1/messages` body (max_tokens is required, as Anthropic requires it)."""
    model = required(body, "model", str)
    messages = parse_system(body.get("system")) + parse_messages(body.get("messages"))
    params = parse_params(body)
    _accepted(body)
    prediction = Prediction(
        model=model,
        messages=messages,
        params=params,
        tools=parse_tools(body.get("tools"), body.get("tool_choice")),
        ttl=request_ttl(body),
    )
    return ParsedMessages(prediction, stream=bool(optional(body, "stream", bool)))


def parse_count_request(body: dict[str, Any]) -> Prediction:
    """A `POST /v1/messages/count_tokens` body: the prompt's parts, no sampling."""
    model = required(body, "model", str)
    messages = parse_system(body.get("system")) + parse_messages(body.get("messages"))
    _accepted(body)
    return Prediction(
        model=model,
        messages=messages,
        tools=parse_tools(body.get("tools"), body.get("tool_choice")),
        ttl=request_ttl(body),
    )


# -- response -------------------------------------------------------------------------------

STOP_REASONS = {
    StopReason.EOS: "end_turn",
    StopReason.STOP_STRING: "stop_sequence",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.CONTEXT_FULL: "max_tokens",
    StopReason.USER_STOPPED: "end_turn",
}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_…` id for a call (the service's own id kept inside it)."""
    if call_id.startswith("toolu_"):
        return call_id
    return f"toolu_{call_id.removeprefix('call_') or uuid.uuid4().hex[:24]}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the `input` object (other JSON values, or text, wrapped)."""
    value = ToolCall("", "", arguments).arguments_object()
    return value if isinstance(value, dict) else {"input": value}


def stop_reason(done: PredictionDone) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence)."""
    if done.tool_calls:
        return "tool_use", None
    reason = STOP_REASONS[done.stats.stop_reason]
    return reason, done.stats.stop_string if reason == "stop_sequence" else None


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


Event = tuple[str, dict[str, Any]]  # (SSE event name, data)


@dataclass
class MessageStream:
    """One answer: prediction events in, Anthropic's stream events out, and the content
    blocks gathered for the whole Message (a non-streamed answer uses the same path)."""

    model_id: str
    message_id: str = ""
    content: list[dict[str, Any]] = field(default_factory=list)
    _open: str | None = None  # the type of the block being streamed

    def __post_init__(self) -> None:
        self.message_id = self.message_id or new_message_id()

    def message(self, done: PredictionDone | None = None) -> dict[str, Any]:
        """The Message object: the whole answer once done, else the empty one
        `message_start` carries."""
        reason, sequence = stop_reason(done) if done else (None, None)
        stats = done.stats if done else None
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model_id,
            "content": [dict(block) for block in self.content] if done else [],
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(
                stats.prompt_tokens if stats else 0, stats.completion_tokens if stats else 0
            ),
        }

    def start(self) -> list[Event]:
        return [
            ("message_start", {"type": "message_start", "message": self.message()}),
            ("ping", {"type": "ping"}),
        ]

    def event(self, event: PredictionEvent) -> list[Event]:
        if isinstance(event, TextFragment):
            return self._delta("text", event.text) if event.text else []
        if isinstance(event, ReasoningFragment):
            return self._delta("thinking", event.text) if event.text else []
        if isinstance(event, ToolCallStarted):
            block = {"type": "tool_use", "id": tool_use_id(event.id), "name": event.name}
            return self._close() + self._open_block({**block, "input": {}})
        if isinstance(event, ToolCallArguments):
            delta = {"type": "input_json_delta", "partial_json": event.delta}
            return [self._block_delta(delta)]
        if isinstance(event, ToolCallEnded):
            index = len(self.content) - 1
            self.content[index]["input"] = tool_input(event.call.arguments)
            return self._close()
        if isinstance(event, PredictionDone):
            return self._finish(event)
        return []  # progress and failed calls (their text comes as text) say nothing

    def _finish(self, done: PredictionDone) -> list[Event]:
        reason, sequence = stop_reason(done)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {
                "input_tokens": done.stats.prompt_tokens,
                "output_tokens": done.stats.completion_tokens,
            },
        }
        return [
            *self._close(),
            ("message_delta", delta),
            ("message_stop", {"type": "message_stop"}),
        ]

    def _delta(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open != kind:
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            events += self._close() + self._open_block(
                empty if kind == "thinking" else {"type": "text", "text": ""}
            )
        self.content[-1][kind] += text
        name = "thinking_delta" if kind == "thinking" else "text_delta"
        events.append(self._block_delta({"type": name, kind: text}))
        return events

    def _open_block(self, block: dict[str, Any]) -> list[Event]:
        self.content.append(dict(block))
        self._open = block["type"]
        start = {"type": "content_block_start", "index": len(self.content) - 1}
        return [("content_block_start", {**start, "content_block": block})]

    def _block_delta(self, delta: dict[str, Any]) -> Event:
        index = len(self.content) - 1
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
        )

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        index = len(self.content) - 1
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]
