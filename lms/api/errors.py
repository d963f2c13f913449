"""The OpenAI error envelope, used for every error the daemon returns.

{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}
"""

from typing import Any, TypedDict


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(TypedDict):
    error: ErrorBody


def error_envelope(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> ErrorEnvelope:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_error(payload: Any) -> ErrorBody | None:
    """The error body of a response payload, or None when it is not an error envelope."""
    if not isinstance(payload, dict):
        return None
    body = payload.get("error")
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return None
    return {
        "message": body["message"],
        "type": str(body.get("type") or "error"),
        "param": body.get("param"),
        "code": body.get("code"),
    }
