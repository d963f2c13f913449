"""The one place that renders: human messages to stderr, data (--json, tables) to stdout.
rich is imported only when a table or colour is actually printed."""

import json
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


# Characters that must never reach a terminal raw from a name: C0/C1 controls (ESC starts
# terminal escape sequences, a newline forges table rows), line separators, and the bidi
# controls that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object) -> str:
    """A name, path or identifier as it may be shown in a terminal: control characters
    written as escapes (ESC as `\\x1b`, a newline as `\\n`, a tab as `\\t`); any other
    text unchanged. For human output only: --json prints the exact values."""
    value = str(text)
    if not _UNSAFE.search(value):
        return value
    value = value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return _UNSAFE.sub(_escape, value)


def info(message: str) -> None:
    print(message, file=sys.stderr)


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def error(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)


def data(text: str) -> None:
    print(text)


def json_out(value: Any) -> None:
    print(json.dumps(value, indent=2))


def stdout_console() -> "Console":
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)
