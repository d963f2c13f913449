"""The aiohttp application factory: the route table, middlewares (access, errors,
metrics), CORS and the API version header."""

from aiohttp import web

from daemon.core import Core
from daemon.http import (
    admin_routes,
    inference_routes,
    lifecycle_routes,
    log_routes,
    messages_routes,
    model_defaults_routes,
    models_routes,
    responses_routes,
    rest_v1_routes,
    sdk_routes,
    settings_routes,
    upstream_routes,
)
from daemon.http.browsers import browser_middleware
from daemon.http.control import DaemonControl
from daemon.http.errors import Handler, error_middleware, error_response
from daemon.http.keys import (
    CONTROL,
    CONVERSATIONS,
    EVENTS,
    MANAGER,
    METRICS,
    MODEL_DEFAULTS,
    MODELS,
    PREDICTIONS,
    UPSTREAMS,
)
from daemon.http.openapi import OPENAPI_PATH, openapi
from daemon.http.routes import KEY, PUBLIC, Route, register
from daemon.http.security import access_middleware, cors_allows
from daemon.metrics import CONTENT_TYPE
from lms.api.version import API_VERSION, API_VERSION_HEADER

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


async def add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # A signal rather than a middleware, so streamed (SSE) responses get the headers too.
    response.headers[API_VERSION_HEADER] = str(API_VERSION)  # `lms` checks it
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


def create_app(control: DaemonControl, core: Core) -> web.Application:
    app = web.Application(
        client_max_size=control.settings.max_body_bytes,
        # Outermost first: metrics see every final status, errors become responses
        # before metrics count them, access is checked before any handler.
        middlewares=[
            metrics_middleware,
            cors_preflight_middleware,
            error_middleware,
            browser_middleware,
            access_middleware,
        ],
    )
    app[CONTROL] = control
    app[MODELS] = core.store
    app[MANAGER] = core.manager
    app[EVENTS] = core.events
    app[METRICS] = core.metrics
    app[PREDICTIONS] = core.predictions
    app[CONVERSATIONS] = core.conversations
    app[MODEL_DEFAULTS] = core.model_defaults
    app[UPSTREAMS] = core.upstreams
    app.on_response_prepare.append(add_headers)
    register(
        app,
        [
            Route("GET", "/metrics", metrics_route, KEY),
            Route("GET", OPENAPI_PATH, openapi, PUBLIC),
            *admin_routes.routes(),
            *models_routes.routes(),
            *inference_routes.routes(),
            *lifecycle_routes.routes(),
            *log_routes.routes(),
            *messages_routes.routes(),
            *model_defaults_routes.routes(),
            *responses_routes.routes(),
            *rest_v1_routes.routes(),
            *settings_routes.routes(),
            *upstream_routes.routes(),
            *sdk_routes.routes(app),  # LM Studio's SDK WebSockets
        ],
    )
    return app
