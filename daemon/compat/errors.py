"""Error bodies per API surface. Every error is classified once (http/errors.py's table:
status, OpenAI type, code); a surface's shape only writes it out. Pure: no I/O.

A route names its shape in the route table (http/routes.py); OpenAI's envelope is the
default, and the one used for unknown routes."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lms.api.errors import error_envelope


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    type: str  # OpenAI's error type (invalid_request_error, server_error, ...)
    message: str
    param: str | None = None
    code: str | None = None


ErrorShape = Callable[[ErrorInfo], dict[str, Any]]


def openai_error(error: ErrorInfo) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`: OpenAI's, LM Studio's v0."""
    return dict(error_envelope(error.message, type=error.type, param=error.param, code=error.code))
