"""Identity, health and the admin endpoints the CLI uses to drive the daemon."""

from typing import Any

from aiohttp import web

from daemon.errors import InvalidRequest
from daemon.http.errors import read_json_object
from daemon.http.keys import CONTROL
from daemon.http.routes import ADMIN, INFERENCE, PUBLIC, Route
from lms.api import admin


async def greeting(request: web.Request) -> web.Response:
    # How LM Studio's clients recognise a server.
    return web.json_response({"lmstudio": True})


async def health(request: web.Request) -> web.Response:
    # Cheap on purpose: never touches models, never resets an idle timer.
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].status())


async def shutdown(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    control.request_shutdown()
    reply: admin.ShutdownReply = {"status": "stopping", "pid": control.status()["pid"]}
    return web.json_response(reply)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(f"'{name}' must be of type {kind.__name__}", param=name)
    return value


def _cors_origins(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return ["*"] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest("'cors' must be a list of origins (or true for any)", param="cors")


async def server_start(request: web.Request) -> web.Response:
    body = await read_json_object(request) if request.body_exists else {}
    port = _optional(body, "port", int)
    if port is not None and not 0 <= port <= 65535:
        raise InvalidRequest("'port' must be between 0 and 65535", param="port")
    control = request.app[CONTROL]
    await control.start_http(
        port=port, bind=_optional(body, "bind", str), cors=_cors_origins(body.get("cors"))
    )
    return web.json_response(control.status()["http"])


async def server_stop(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    was_running = await control.stop_http()
    reply: admin.ServerStopReply = {**control.status()["http"], "stopped": was_running}
    return web.json_response(reply)


def routes() -> list[Route]:
    return [
        Route("GET", admin.GREETING_PATH, greeting, PUBLIC),
        Route("GET", admin.HEALTH_PATH, health, PUBLIC),
        Route("GET", admin.STATUS_PATH, status, INFERENCE),
        Route("POST", admin.SHUTDOWN_PATH, shutdown, ADMIN),
        Route("POST", admin.SERVER_START_PATH, server_start, ADMIN),
        Route("POST", admin.SERVER_STOP_PATH, server_stop, ADMIN),
    ]
