"""The one table that maps domain errors to HTTP statuses and the OpenAI error envelope,
and the middleware that applies it to every route (unknown routes included)."""

import logging
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
    WorkerCrashed,
)
from daemon.http.routes import error_shape_of

log = logging.getLogger(__name__)

# error class -> (HTTP status, OpenAI error type, default code); looked up along the MRO.
ERROR_TABLE: dict[type[LmsError], tuple[int, str, str | None]] = {
    PayloadTooLarge: (413, "invalid_request_error", "payload_too_large"),
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


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 that says what is wrong."""
    import json

    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"Request body too large: {exc.text}") from None
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body
