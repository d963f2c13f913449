"""OpenAI's Responses API (`POST /v1/responses`) <-> the prediction service. Pure: no I/O.

    request body ──parse_response_request──► ParsedResponse ──.prediction(history)──► Prediction
    PredictionEvent* ──ResponseStream──► named stream events, and the Response object

The stored conversation a `previous_response_id` names is the route's business (the
ConversationStore); here it is only a tuple of messages put before the new input.
`instructions` are never carried over from a previous response (as at OpenAI): they go
first, as a system message, on the request that sends them.
"""

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from daemon.compat.errors import ErrorInfo
from daemon.compat.fields import in_range, optional
from daemon.compat.images import image_from_url
from daemon.compat.requests import parse_params
from daemon.compat.tools import parse_tools
from daemon.errors import InvalidRequest
from daemon.prediction.types import (
    ContentPart,
    Message,
    Prediction,
    PredictionDone,
    PredictionEvent,
    ReasoningFragment,
    Role,
    TextFragment,
    TextPart,
    ToolCall,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallStarted,
)

INPUT_ROLES = {"user", "system", "developer", "assistant"}
TEXT_PARTS = {"input_text", "output_text", "text"}
TRUNCATION = {"auto", "disabled"}
MAX_METADATA_KEYS = 16

# -- request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedResponse:
    """A validated request: the new input (no history, no instructions) and what the
    Response object echoes back."""

    model: str
    input: tuple[Message, ...]
    instructions: str | None
    base: Prediction  # everything but the messages
    stream: bool
    store: bool
    previous_response_id: str | None
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the Response repeats

    def prediction(self, history: tuple[Message, ...] = ()) -> Prediction:
        """The prediction: instructions first, then the stored conversation, then the input."""
        system = (Message("system", (TextPart(self.instructions),)),) if self.instructions else ()
        return replace(self.base, messages=system + history + self.input)


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _text_parts(content: Any, where: str) -> tuple[ContentPart, ...]:
    """A message's content: a string, or parts of type input_text / output_text, and
    input_image (a data URL)."""
    if isinstance(content, str):
        return (TextPart(content),)
    if not isinstance(content, list):
        raise _bad(
            f"'{where}.content' must be a string or an array of content parts",
            f"{where}.content",
            "invalid_type",
        )
    parts: list[ContentPart] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _bad(
                f"'{where}.content[{j}]' must be a content part object with a 'type'",
                f"{where}.content",
                "invalid_type",
            )
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise _bad(
                    f"'{where}.content[{j}].text' must be a string",
                    f"{where}.content",
                    "invalid_type",
                )
            parts.append(TextPart(part["text"]))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(TextPart(part["refusal"]))
        elif kind == "input_image":  # {"image_url": "data:image/...;base64,...", "detail"}
            if part.get("file_id") is not None and part.get("image_url") is None:
                raise _bad(
                    f"'{where}.content[{j}].file_id': this server has no file store; send "
                    "the image as a base64 data URL in image_url",
                    f"{where}.content",
                    "unsupported_content",
                )
            parts.append(image_from_url(part.get("image_url"), param=f"{where}.content[{j}]"))
        else:
            raise _bad(
                f"content parts of type {kind!r} are not supported by this server; send input_text",
                f"{where}.content",
                "unsupported_content",
            )
    return tuple(parts)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"'{where}.{key}' must be a non-empty string", f"{where}.{key}", "invalid_type")
    return value


def _call_output(output: Any, where: str) -> str:
    """A function_call_output's output: a string, or text parts joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p.text for p in _text_parts(output, where) if isinstance(p, TextPart))
    raise _bad(
        f"'{where}.output' must be a string or an array of input_text parts",
        f"{where}.output",
        "invalid_type",
    )


def parse_input(raw: Any) -> tuple[Message, ...]:
    """`input`: a string (one user message) or a list of input items."""
    if raw is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if isinstance(raw, str):
        return (Message("user", (TextPart(raw),)),)
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a string or a non-empty array of input items", "input")
    messages: list[Message] = []
    names: dict[str, str] = {}  # call_id -> function name, for the tool messages
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object", where, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if isinstance(role, list | dict) or role not in INPUT_ROLES:
                raise _bad(
                    f"'{where}.role' must be one of {', '.join(sorted(INPUT_ROLES))}",
                    f"{where}.role",
                )
            internal: Role = "system" if role == "developer" else role
            messages.append(Message(internal, _text_parts(item.get("content"), where)))
        elif kind == "function_call":
            call_id = _string(item, "call_id", where)
            name = _string(item, "name", where)
            arguments = item.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise _bad(
                    f"'{where}.arguments' must be JSON text (a string)",
                    f"{where}.arguments",
                    "invalid_type",
                )
            names[call_id] = name
            call = ToolCall(call_id, name, arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                # Parallel calls, or a call after the text of the same turn: one message.
                messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message("assistant", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _call_output(item.get("output"), where)
            messages.append(
                Message("tool", (TextPart(output),), tool_call_id=call_id, name=names.get(call_id))
            )
        elif kind == "reasoning":
            continue  # earlier thinking: chat templates leave it out of the prompt
        else:
            raise _bad(
                f"input items of type {kind!r} are not supported by this server; send "
                "message, function_call, function_call_output or reasoning items",
                f"{where}.type",
                "unsupported_input",
            )
    return tuple(messages)


def _template_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Responses' flat function tools -> the template shape `{"type": "function",
    "function": {...}}`."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array", "tools", "invalid_type")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise _bad(f"'tools[{i}]' must be an object", "tools", "invalid_type")
        if tool.get("type") != "function":
            raise _bad(
                f"'tools[{i}]': tools of type {tool.get('type')!r} are not supported by this "
                'server; send {"type": "function", "name": ..., "parameters": ...}',
                "tools",
                "unsupported_tool",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"'tools[{i}].name' must be a non-empty string", "tools", "invalid_type")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"'tools[{i}].description' must be a string", "tools", "invalid_type")
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise _bad(f"'tools[{i}].parameters' must be a JSON schema", "tools")
            function["parameters"] = parameters
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    """Responses' tool_choice -> the chat shape parse_tools reads."""
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str):
            raise _bad("'tool_choice.name' must be a string", "tool_choice", "invalid_type")
        return {"type": "function", "function": {"name": name}}
    raise _bad(
        '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "name": ...}',
        "tool_choice",
    )


def parse_text_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format`: json_schema as given, json_object as any JSON object, text as free."""
    if text is None:
        return None
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("'text.format' must be an object", "text.format", "invalid_type")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"schema": {"type": "object"}}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise _bad("'text.format.schema' must be a JSON schema object", "text.format")
        return {"schema": schema}
    raise _bad("'text.format.type' must be 'text', 'json_object' or 'json_schema'", "text.format")


def _metadata(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or len(raw) > MAX_METADATA_KEYS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        raise _bad(
            f"'metadata' must be an object of at most {MAX_METADATA_KEYS} string values",
            "metadata",
            "invalid_type",
        )
    return dict(raw)


def _refuse(body: dict[str, Any]) -> None:
    """Fields that ask for something this server does not do: a clear 400."""
    if body.get("background"):
        raise _bad("'background' responses are not supported by this server", "background")
    for name in ("conversation", "prompt"):
        if body.get(name) is not None:
            raise _bad(
                f"'{name}' is not supported by this server (use previous_response_id)",
                name,
                "unsupported_parameter",
            )


def parse_response_request(body: dict[str, Any]) -> ParsedResponse:
    model = optional(body, "model", str)
    if not model:
        raise _bad("'model' is required", "model", "missing_required_parameter")
    _refuse(body)
    messages = parse_input(body.get("input"))
    instructions = optional(body, "instructions", str)
    max_output = optional(body, "max_output_tokens", int)
    if max_output is not None and max_output < 1:
        raise _bad("'max_output_tokens' must be at least 1", "max_output_tokens")
    temperature = optional(body, "temperature", float)
    in_range("temperature", temperature, 0, 2)
    top_p = optional(body, "top_p", float)
    in_range("top_p", top_p, 0, 1)
    sampling = {"temperature": temperature, "top_p": top_p, "seed": body.get("seed")}
    params = replace(parse_params(sampling), max_tokens=max_output)
    text = optional(body, "text", dict)
    reasoning = optional(body, "reasoning", dict)
    truncation = optional(body, "truncation", str)
    if truncation is not None and truncation not in TRUNCATION:
        raise _bad("'truncation' must be 'auto' or 'disabled'", "truncation")
    raw_tools = body.get("tools")
    tools = parse_tools(_template_tools(raw_tools), _tool_choice(body.get("tool_choice")))
    parallel = optional(body, "parallel_tool_calls", bool)
    store = optional(body, "store", bool)
    previous = optional(body, "previous_response_id", str)
    optional(body, "user", str)
    base = Prediction(
        model=model,
        params=params,
        tools=tools,
        structured=parse_text_format(text),
    )
    echo = {
        "instructions": instructions,
        "tools": list(raw_tools or []),
        "tool_choice": body.get("tool_choice") or "auto",
        "text": text or {"format": {"type": "text"}},
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_output_tokens": max_output,
        "previous_response_id": previous,
        "store": store is not False,
        "parallel_tool_calls": parallel is not False,
        "metadata": _metadata(body.get("metadata")) or {},
        "reasoning": reasoning,
        "truncation": truncation or "disabled",
        "user": body.get("user"),
    }
    return ParsedResponse(
        model=model,
        input=messages,
        instructions=instructions,
        base=base,
        stream=bool(optional(body, "stream", bool)),
        store=store is not False,
        previous_response_id=previous,
        echo=echo,
    )


# -- response -------------------------------------------------------------------------------


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def answer_message(done: PredictionDone) -> Message:
    """The answer as a conversation message (for the stored conversation)."""
    content = (TextPart(done.text),) if done.text else ()
    return Message("assistant", content, tool_calls=done.tool_calls)


def usage(done: PredictionDone) -> dict[str, Any]:
    """Token counts. cached_tokens: prompt tokens reused from the slot's prompt cache;
    reasoning_tokens: 0, thinking is counted in output_tokens but not apart."""
    stats = done.stats
    return {
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": stats.cached_tokens},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


Event = tuple[str, dict[str, Any]]  # (SSE event name, payload)


@dataclass
class _Item:
    kind: str  # "message", "reasoning", "function_call"
    body: dict[str, Any]
    text: str = ""  # the text or arguments so far


class ResponseStream:
    """One response: prediction events in, Responses stream events out (each a name and a
    payload with `type` and `sequence_number`), and the Response object at any point.
    A non-streamed answer feeds the same events and keeps only `response()`."""

    def __init__(
        self,
        response_id: str,
        model_id: str,
        request: ParsedResponse,
        created_at: int | None = None,
    ) -> None:
        self.response_id = response_id
        self.model_id = model_id
        self.request = request
        self.created_at = created_at if created_at is not None else int(time.time())
        self.status = "in_progress"
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.calls: dict[int, _Item] = {}  # the prediction's call index -> its item
        self.done: PredictionDone | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.sequence = 0

    # the Response object

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model_id,
            "output": [dict(item.body) for item in self.items],
            "usage": usage(self.done) if self.done else None,
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            **self.request.echo,
        }
        return body

    # events

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def event(self, event: PredictionEvent) -> list[Event]:
        if isinstance(event, TextFragment):
            return self._text(event.text) if event.text else []
        if isinstance(event, ReasoningFragment):
            return self._reasoning(event.text) if event.text else []
        if isinstance(event, ToolCallStarted):
            return self._call_started(event)
        if isinstance(event, ToolCallArguments):
            return self._call_arguments(event)
        if isinstance(event, ToolCallEnded):
            return self._call_ended(event)
        if isinstance(event, PredictionDone):
            return self._finish(event)
        return []  # progress and failed calls (their text comes as text) say nothing here

    def fail(self, error: ErrorInfo) -> list[Event]:
        """After the stream began: the error, and the response as failed."""
        events = self._close("incomplete")
        self.status = "failed"
        self.error = {"code": "server_error", "message": error.message}
        events.append(
            self._event("error", code=error.code, message=error.message, param=error.param)
        )
        events.append(self._event("response.failed", response=self.response()))
        return events

    def _event(self, kind: str, **payload: Any) -> Event:
        self.sequence += 1
        return kind, {"type": kind, "sequence_number": self.sequence - 1, **payload}

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.body["id"], "output_index": self.items.index(item)}

    def _open(self, kind: str, body: dict[str, Any]) -> tuple[_Item, list[Event]]:
        events = self._close("completed")
        item = _Item(kind, body)
        self.items.append(item)
        self.open = item
        events.append(
            self._event(
                "response.output_item.added",
                output_index=len(self.items) - 1,
                item=dict(body),
            )
        )
        return item, events

    def _open_message(self) -> tuple[_Item, list[Event]]:
        body = {
            "type": "message",
            "id": item_id("msg"),
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        item, events = self._open("message", body)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.append(
            self._event(
                "response.content_part.added", **self._where(item), content_index=0, part=part
            )
        )
        return item, events

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        item = self.open
        if item is None or item.kind != "message":
            item, events = self._open_message()
        item.text += text
        events.append(
            self._event(
                "response.output_text.delta",
                **self._where(item),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _reasoning(self, text: str) -> list[Event]:
        events: list[Event] = []
        item = self.open
        if item is None or item.kind != "reasoning":
            body = {"type": "reasoning", "id": item_id("rs"), "summary": [], "content": []}
            item, events = self._open("reasoning", body)
            part = {"type": "reasoning_text", "text": ""}
            events.append(
                self._event(
                    "response.content_part.added", **self._where(item), content_index=0, part=part
                )
            )
        item.text += text
        events.append(
            self._event(
                "response.reasoning_text.delta", **self._where(item), content_index=0, delta=text
            )
        )
        return events

    def _call_started(self, event: ToolCallStarted) -> list[Event]:
        body = {
            "type": "function_call",
            "id": item_id("fc"),
            "call_id": event.id,
            "name": event.name,
            "arguments": "",
            "status": "in_progress",
        }
        item, events = self._open("function_call", body)
        self.calls[event.index] = item
        return events

    def _call_arguments(self, event: ToolCallArguments) -> list[Event]:
        item = self.calls.get(event.index)
        if item is None or not event.delta:
            return []
        item.text += event.delta
        return [
            self._event(
                "response.function_call_arguments.delta", **self._where(item), delta=event.delta
            )
        ]

    def _call_ended(self, event: ToolCallEnded) -> list[Event]:
        item = self.calls.get(event.index)
        if item is None:
            return []
        item.text = event.call.arguments
        return self._close("completed") if item is self.open else []

    def _close(self, status: str) -> list[Event]:
        """The open item's done events; it takes its final shape in `items`."""
        item = self.open
        if item is None:
            return []
        self.open = None
        where = self._where(item)
        events: list[Event] = []
        if item.kind == "message":
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            events += [
                self._event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=item.text,
                    logprobs=[],
                ),
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
            item.body.update(status=status, content=[part])
        elif item.kind == "reasoning":
            part = {"type": "reasoning_text", "text": item.text}
            events += [
                self._event(
                    "response.reasoning_text.done", **where, content_index=0, text=item.text
                ),
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
            item.body.update(content=[part])
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item.body["name"],
                    arguments=item.text,
                )
            )
            item.body.update(status=status, arguments=item.text)
        events.append(
            self._event(
                "response.output_item.done",
                output_index=where["output_index"],
                item=dict(item.body),
            )
        )
        return events

    def _finish(self, done: PredictionDone) -> list[Event]:
        self.done = done
        cut = done.stopped_by_length and not done.tool_calls
        events: list[Event] = []
        if not self.items:  # nothing said: still one (empty) message, as OpenAI answers
            events += self._open_message()[1]
        events += self._close("incomplete" if cut else "completed")
        if cut:
            self.status = "incomplete"
            self.incomplete_details = {"reason": "max_output_tokens"}
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events


def output_text(response: dict[str, Any]) -> str:
    """All output_text of a Response object (the SDK's `output_text`), for tests and logs."""
    return "".join(
        part.get("text", "")
        for item in response.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    )


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "deleted": True}
