"""Tool calling inside the prediction service: wiring tools into the prompt and parsing
calls out of the generated text. (The wire shapes, OpenAI's `tools`/`tool_choice` and
others, are parsed into a `ToolSetup` by the translators in daemon/compat.)

Models whose chat template handles tools get them through the template (native). Others
get LM Studio's default format: a system prompt describing the tools and asking for
`[TOOL_REQUEST]{"name": ..., "arguments": {...}}[END_TOOL_REQUEST]`, with `tool` messages
turned into user messages. `required` and a named function are enforced with a grammar
(structured output) for exactly one call, as bare JSON `{"name": ..., "arguments": ...}`
without markers (they would cost tokens and nothing else): the grammar, and so the
generation, ends with the call's closing brace. The parser accepts both marker formats and
Hermes/Qwen's `<tool_call>{...}</tool_call>`, and (`bare`) a forced call's bare JSON; a call
that does not parse stays plain content (reported as a failed call too), never an error.
Whitespace alone next to calls (the newline after `</tool_call>`) is not content.

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


def call_constraint(setup: ToolSetup, *, native: bool = False) -> dict[str, Any]:
    """Structured output forcing one valid call (for `required`): its bare JSON, nothing
    before or after it, whatever the model's own call format (`native`) is; the parser
    made with `bare=True` reads it."""
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
    return {"schema": schema, "prefix": "", "suffix": "", "repeat": False}


@dataclass(frozen=True)
class FailedCall:
    """Text that opened a call marker but is not a valid call of a known tool."""

    text: str
    reason: str


Piece = str | ToolCall | FailedCall  # content text, a complete call, or a failed one


class ToolCallParser:
    """Splits generated text into content and tool calls, incrementally (for streaming):
    text that may begin a call marker is held back until it is clear, and whitespace alone
    until other text follows (whitespace next to a call is dropped, as a whole answer with
    calls has no content). `bare`: the output may be one call's JSON without markers (a
    forced call, call_constraint): it then runs to the end of the generation."""

    def __init__(self, names: list[str], *, bare: bool = False) -> None:
        self.names = set(names)
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._start = ""  # inside a call: the marker that opened it
        self._end: str | None = None  # inside a call: the marker that closes it
        self._bare = bare  # not decided yet whether the output is a bare call
        self._in_bare = False  # inside a bare call (it ends with the generation)
        self._space = ""  # whitespace held back

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        if self._bare:
            head = self._buffer.lstrip()
            if not head:
                return pieces
            self._bare = False
            if head.startswith("{"):
                self._in_bare, self._buffer, self._start, self._end = True, head, "", ""
        if self._in_bare:
            return pieces
        while True:
            if self._end is None:
                start, at = _first_marker(self._buffer)
                if start is None:
                    keep = _held_back(self._buffer)
                    pieces += self._content(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return pieces
                pieces += self._content(self._buffer[:at])
                self._buffer = self._buffer[at + len(start) :]
                self._end = MARKERS[start]
                self._start = start
            else:
                at = self._buffer.find(self._end)
                if at < 0:
                    return pieces
                pieces += self._call_or_text(self._buffer[:at], closed=True)
                self._buffer = self._buffer[at + len(self._end) :]
                self._end = None

    def finish(self) -> list[Piece]:
        """The rest, when generation ends (a call may miss its closing marker)."""
        if self._end is not None:
            pieces = self._call_or_text(self._buffer, closed=False)
        else:
            pieces = self._content(self._buffer)
        if self._space and not self.calls:
            pieces.append(self._space)
        self._buffer, self._end, self._space, self._in_bare = "", None, "", False
        return pieces

    def _content(self, text: str) -> list[Piece]:
        if not text:
            return []
        if not text.strip():
            self._space += text
            return []
        text, self._space = self._space + text, ""
        return [text]

    def _call_or_text(self, body: str, *, closed: bool) -> list[Piece]:
        piece = self._parse_call(body, closed=closed)
        if isinstance(piece, ToolCall):
            self._space = ""  # whitespace next to a call is not content
            return [piece]
        space, self._space = self._space, ""
        return [space, piece] if space else [piece]

    def _parse_call(self, body: str, *, closed: bool) -> Piece:
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
