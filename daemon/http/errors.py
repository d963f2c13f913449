"""The one table that maps domain errors to HTTP statuses and the OpenAI error envelope,
and the middleware that applies it to every route (unknown routes included)."""

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from daemon.compat.errors import ErrorInfo, ErrorShape, openai_error
from daemon.errors import (
    ConfigError,
    CrashedWhileLoading,
    EngineError,
    Forbidden,
    InsufficientMemory,
    InvalidRequest,
    LmsError,
    LoadFailed,
    ModelNotFound,
    ModelUnloaded,
    NotFound,
    PayloadTooLarge,
    ServerBusy,
    StartupError,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamUnavailable,
    WorkerCrashed,
)
from daemon.http.routes import error_shape_of

log = logging.getLogger(__name__)

# error class -> (HTTP status, OpenAI error type, default code); looked up along the MRO.
ERROR_TABLE: dict[type[LmsError], tuple[int, str, str | None]] = {
    PayloadTooLarge: (413, "invalid_request_error", "payload_too_large"),
    UnsupportedMediaType: (415, "invalid_request_error", "unsupported_media_type"),
    InvalidRequest: (400, "invalid_request_error", None),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    NotFound: (404, "invalid_request_error", "not_found"),
    Forbidden: (403, "permission_error", "forbidden"),
    Unauthorized: (401, "invalid_request_error", "invalid_api_key"),
    ConfigError: (400, "invalid_request_error", "invalid_config"),
    StartupError: (409, "server_error", "listener_failed"),
    InsufficientMemory: (507, "server_error", "insufficient_memory"),
    CrashedWhileLoading: (502, "server_error", "model_crashed"),
    LoadFailed: (500, "server_error", "model_load_failed"),
    WorkerCrashed: (502, "server_error", "model_crashed"),
    ModelUnloaded: (503, "server_error", "model_unloaded"),
    ServerBusy: (503, "server_error", "server_busy"),
    UpstreamFailed: (502, "server_error", "upstream_failed"),
    UpstreamUnavailable: (503, "server_error", "upstream_unavailable"),
    EngineError: (500, "server_error", "engine_error"),
    LmsError: (500, "server_error", None),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    shape: ErrorShape = openai_error,
) -> web.Response:
    info = ErrorInfo(status, type, message, param, code)
    return web.json_response(shape(info), status=status)


def classify(exc: LmsError) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, code) for a domain error."""
    status, kind, code = next(ERROR_TABLE[c] for c in type(exc).__mro__ if c in ERROR_TABLE)
    return status, kind, getattr(exc, "code", None) or code


def error_info(exc: LmsError) -> ErrorInfo:
    status, kind, code = classify(exc)
    return ErrorInfo(status, kind, str(exc), getattr(exc, "param", None), code)


def response_for(exc: LmsError, shape: ErrorShape = openai_error) -> web.Response:
    info = error_info(exc)
    response = web.json_response(shape(info), status=info.status)
    if isinstance(exc, ServerBusy):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _http_exception_response(
    request: web.Request, exc: web.HTTPException, shape: ErrorShape
) -> web.Response:
    if exc.status == 404:
        message = f"Unknown route: {request.method} {request.path}"
        return error_response(
            404, message, type="invalid_request_error", code="unknown_route", shape=shape
        )
    if exc.status == 405:
        message = f"Method {request.method} is not allowed on {request.path}"
        return error_response(
            405, message, type="invalid_request_error", code="method_not_allowed", shape=shape
        )
    if exc.status == 413:
        return error_response(
            413,
            exc.text or "Request body too large",
            type="invalid_request_error",
            code="payload_too_large",
            shape=shape,
        )
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return error_response(exc.status, exc.reason, type=kind, shape=shape)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LmsError as exc:
        return response_for(exc, error_shape_of(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception_response(request, exc, error_shape_of(request))
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(
            500, "Internal server error", type="server_error", shape=error_shape_of(request)
        )


JSON_MEDIA_TYPE = "application/json"
MAX_JSON_DEPTH = 64  # objects and arrays inside one another; real requests use a dozen
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_json_media_type(content_type: str) -> bool:
    """`application/json`, or any `type/subtype+json` (parameters already stripped)."""
    media = content_type.strip().lower()
    return media == JSON_MEDIA_TYPE or ("/" in media and media.endswith("+json"))


def _json_path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(the body)"


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def check_json_value(body: Any) -> None:
    """Refuse a parsed JSON value nested more than MAX_JSON_DEPTH deep or holding a lone
    UTF-16 surrogate (`"\\ud800"`: valid JSON, but no UTF-8 text can carry it; a pair
    is decoded into one character), without recursion."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(body, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if _has_surrogate(value):
                raise _lone_surrogate(value, path)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and _has_surrogate(key):
                raise _lone_surrogate(key, path)
            stack.append((item, depth + 1, (*path, key)))


def _lone_surrogate(text: str, path: tuple[str | int, ...]) -> InvalidRequest:
    found = _SURROGATE.search(text)
    code_point = f"\\u{ord(found.group()):04x}" if found else "a surrogate"
    where = _json_path(path)
    return InvalidRequest(
        f"The request body holds a lone UTF-16 surrogate ({code_point}) in {where}: "
        "a \\ud800-\\udfff escape must be half of a pair; send valid Unicode text",
        param=None if where == "(the body)" else where,
        code="invalid_unicode",
    )


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body is nested too deeply: at most {MAX_JSON_DEPTH} levels of "
        "objects and arrays",
        code="json_too_deep",
    )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 that says what is wrong: it must
    come with a JSON Content-Type (so that a browser has to preflight it), parse, be an
    object, nest at most MAX_JSON_DEPTH deep and hold only valid Unicode text."""
    if "Content-Type" not in request.headers or not is_json_media_type(request.content_type):
        sent = request.headers.get("Content-Type")
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {sent!r}; send the JSON body with "
            f"`Content-Type: {JSON_MEDIA_TYPE}`"
            if sent is not None
            else f"No Content-Type; send the JSON body with `Content-Type: {JSON_MEDIA_TYPE}`",
            code="unsupported_media_type",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"Request body too large: {exc.text}") from None
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    check_json_value(body)
    return body
