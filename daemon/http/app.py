"""The aiohttp application factory: routes, middlewares (security, errors, metrics) and
CORS."""

from aiohttp import web

from daemon.events import EventBus
from daemon.http import (
    admin_routes,
    inference_routes,
    lifecycle_routes,
    log_routes,
    models_routes,
    settings_routes,
)
from daemon.http.control import DaemonControl
from daemon.http.errors import Handler, error_middleware, error_response
from daemon.http.keys import CONTROL, EVENTS, MANAGER, METRICS, MODELS
from daemon.http.security import cors_allows, security_middleware
from daemon.manager import ModelManager
from daemon.metrics import CONTENT_TYPE, Metrics

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Api-Key"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or not cors_allows(request.app[CONTROL].cors, origin):
        return None
    return origin


@web.middleware
async def cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    origin = _allowed_origin(request)
    if origin is None:
        return error_response(
            403,
            f"origin {request.headers.get('Origin')!r} is not allowed (see `cors`)",
            type="permission_error",
            code="cors_origin_not_allowed",
        )
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        response.headers["Access-Control-Allow-Private-Network"] = "true"
    return response


async def add_cors_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # A signal rather than a middleware, so streamed (SSE) responses get the headers too.
    if not isinstance(request, web.Request):
        return
    origin = _allowed_origin(request)
    if origin is not None:
        wildcard = "*" in request.app[CONTROL].cors
        response.headers["Access-Control-Allow-Origin"] = "*" if wildcard else origin
        if not wildcard:
            response.headers["Vary"] = "Origin"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    request.app[METRICS].request(endpoint, response.status)
    return response


async def metrics_route(request: web.Request) -> web.Response:
    if not request.app[CONTROL].settings.metrics:
        return error_response(
            404,
            "metrics are off; turn them on with `lms server config set metrics true`",
            type="invalid_request_error",
            code="unknown_route",
        )
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


def metrics_for(manager: ModelManager) -> Metrics:
    return Metrics(
        loaded=lambda: len(manager.instances()),
        queued=lambda: sum(max(0, i.in_flight - i.config.parallel) for i in manager.instances()),
    )


def create_app(
    control: DaemonControl,
    manager: ModelManager,
    events: EventBus | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=control.settings.max_body_bytes,
        # Outermost first: metrics see every final status, errors become responses
        # before metrics count them, security runs before any handler.
        middlewares=[
            metrics_middleware,
            cors_preflight_middleware,
            error_middleware,
            security_middleware,
        ],
    )
    app[CONTROL] = control
    app[MODELS] = manager.store
    app[MANAGER] = manager
    app[EVENTS] = EventBus() if events is None else events
    app[METRICS] = metrics_for(manager) if metrics is None else metrics
    app.on_response_prepare.append(add_cors_headers)
    app.router.add_get("/metrics", metrics_route)
    admin_routes.add_routes(app)
    models_routes.add_routes(app)
    inference_routes.add_routes(app)
    lifecycle_routes.add_routes(app)
    log_routes.add_routes(app)
    settings_routes.add_routes(app)
    return app
