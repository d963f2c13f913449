"""The one place that renders: human messages to stderr, data (--json, tables) to stdout.
rich is imported only when a table or colour is actually printed."""

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


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
