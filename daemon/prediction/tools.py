"""Tool calling inside the prediction service: wiring tools into the prompt and parsing
calls out of the generated text. (The wire shapes, OpenAI's `tools`/`tool_choice` and
others, are parsed into a `ToolSetup` by the translators in daemon/compat.)

Models whose chat template handles tools get them through the template (native). Others
get LM Studio's default format: a system prompt describing the tools and asking for
`[TOOL_REQUEST]{"name": ..., "arguments": {...}}[END_TOOL_REQUEST]`, with `tool` messages
turned into user messages. `required` and a named function are enforced with a grammar
(structured output), so the model cannot answer without a valid call. The parser accepts
both that format and Hermes/Qwen's `<tool_call>{...}</tool_call>`; a call that does not
parse stays plain content (reported as a failed call too), never an error.

Tools are kept in the shape chat templates consume: `{"type": "function", "function":
{"name", "description", "parameters"}}`.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from daemon.prediction.types import ToolCall, ToolSetup

REQUEST_START, REQUEST_END = "[TOOL_REQUEST]", "[END_TOOL_REQUEST]"
HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
MARKERS = {REQUEST_START: REQUEST_END, HERMES_START: HERMES_END}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _functions(setup: ToolSetup) -> list[dict[str, Any]]:
    return [t["function"] for t in setup.tools if t["function"]["name"] in setup.names]


def fallback_messages(messages: list[dict[str, Any]], setup: ToolSetup) -> list[dict[str, Any]]:
    """The conversation for a model without a tool-aware template (LM Studio's default)."""
    must = (
        "You must call one of them."
        if setup.mode == "required"
        else ("If no tool is needed, answer normally.")
    )
    instructions = (
        "You can call these tools:\n"
        + json.dumps(_functions(setup), indent=1)
        + f"\n\nTo call a tool, reply with exactly {REQUEST_START}"
        + '{"name": "<tool name>", "arguments": {<arguments as JSON>}}'
        + f"{REQUEST_END} and nothing else; several calls may follow each other. {must}"
    )
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            out.append(
                {
                    "role": "user",
                    "content": f"Result of tool call {message.get('tool_call_id', '')}: "
                    + message["content"],
                }
            )
        elif message["role"] == "assistant" and message.get("tool_calls"):
            calls = "".join(
                REQUEST_START
                + json.dumps(
                    {
                        "name": call.get("function", {}).get("name"),
                        "arguments": _arguments_object(call.get("function", {}).get("arguments")),
                    }
                )
                + REQUEST_END
                for call in message["tool_calls"]
            )
            out.append({"role": "assistant", "content": message["content"] + calls})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instructions}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def call_constraint(setup: ToolSetup, *, native: bool) -> dict[str, Any]:
    """Structured output forcing one or more valid calls (for `required`)."""
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for f in _functions(setup)
    ]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    start, end = (
        (HERMES_START + "\n", "\n" + HERMES_END) if native else (REQUEST_START, REQUEST_END)
    )
    return {"schema": schema, "prefix": start, "suffix": end, "repeat": True}


@dataclass(frozen=True)
class FailedCall:
    """Text that opened a call marker but is not a valid call of a known tool."""

    text: str
    reason: str


Piece = str | ToolCall | FailedCall  # content text, a complete call, or a failed one


class ToolCallParser:
    """Splits generated text into content and tool calls, incrementally (for streaming):
    text that may begin a call marker is held back until it is clear."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._start = ""  # inside a call: the marker that opened it
        self._end: str | None = None  # inside a call: the marker that closes it

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while True:
            if self._end is None:
                start, at = _first_marker(self._buffer)
                if start is None:
                    keep = _held_back(self._buffer)
                    pieces += _content(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return pieces
                pieces += _content(self._buffer[:at])
                self._buffer = self._buffer[at + len(start) :]
                self._end = MARKERS[start]
                self._start = start
            else:
                at = self._buffer.find(self._end)
                if at < 0:
                    return pieces
                pieces.append(self._call_or_text(self._buffer[:at], closed=True))
                self._buffer = self._buffer[at + len(self._end) :]
                self._end = None

    def finish(self) -> list[Piece]:
        """The rest, when generation ends (a call may miss its closing marker)."""
        if self._end is not None:
            pieces: list[Piece] = [self._call_or_text(self._buffer, closed=False)]
        else:
            pieces = list(_content(self._buffer))
        self._buffer, self._end = "", None
        return pieces

    def _call_or_text(self, body: str, *, closed: bool) -> Piece:
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        text = self._start + body + ((self._end or "") if closed else "")
        if not isinstance(value, dict):
            return FailedCall(text, "the call is not a JSON object")
        if value.get("name") not in self.names:
            return FailedCall(text, f"the model called an unknown tool {value.get('name')!r}")
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _arguments_object(arguments)
        if not isinstance(arguments, dict):
            return FailedCall(text, "the call's arguments are not a JSON object")
        call = ToolCall(new_call_id(), value["name"], json.dumps(arguments))
        self.calls.append(call)
        return call


def _first_marker(text: str) -> tuple[str | None, int]:
    found = [(text.find(m), m) for m in MARKERS if m in text]
    if not found:
        return None, -1
    at, marker = min(found)
    return marker, at


def _held_back(text: str) -> int:
    """Length of the longest end of `text` that could start a marker."""
    for size in range(min(len(text), max(map(len, MARKERS))), 0, -1):
        if any(m.startswith(text[-size:]) for m in MARKERS):
            return size
    return 0


def _content(text: str) -> list[Piece]:
    return [text] if text else []
