"""The aiohttp application factory."""

from aiohttp import web

from daemon.config import Settings
from daemon.http import admin_routes, inference_routes, lifecycle_routes, models_routes
from daemon.http.control import DaemonControl
from daemon.http.errors import Handler, error_middleware
from daemon.http.keys import CONTROL, MANAGER, MODELS, SETTINGS
from daemon.manager import ModelManager

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Api-Key",
}


def _cors_applies(request: web.Request) -> bool:
    return request.app[CONTROL].cors and "Origin" in request.headers


@web.middleware
async def cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if preflight and _cors_applies(request):
        return web.Response(status=204)
    return await handler(request)


async def add_cors_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # A signal rather than a middleware, so streamed (SSE) responses get the headers too.
    if isinstance(request, web.Request) and _cors_applies(request):
        response.headers.update(CORS_HEADERS)


def create_app(
    control: DaemonControl, settings: Settings, manager: ModelManager
) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[cors_preflight_middleware, error_middleware],
    )
    app[CONTROL] = control
    app[SETTINGS] = settings
    app[MODELS] = manager.store
    app[MANAGER] = manager
    app.on_response_prepare.append(add_cors_headers)
    admin_routes.add_routes(app)
    models_routes.add_routes(app)
    inference_routes.add_routes(app)
    lifecycle_routes.add_routes(app)
    return app
