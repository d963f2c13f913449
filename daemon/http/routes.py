"""The route table: every route with who may call it. Route modules list their routes
(`routes() -> list[Route]`); `create_app` registers them and `access_middleware`
(security.py) enforces each one's level. docs/security.md states the same table (a test
compares the two).

Levels, over TCP (the owner-only Unix socket may call everything). TCP on loopback is
open to every user of the machine, so whatever reveals the owner's data or changes the
daemon's state needs a key there (docs/security.md, "Threat model"):

- PUBLIC     anyone who reaches the port, never a key (LM Studio's greeting, health)
- INFERENCE  a key of any scope when keys are required (`require_api_key`, or keys
             exist and the server listens beyond loopback); open otherwise
- KEY        a key of any scope, always (metrics: the owner's traffic, for a scraper)
- ADMIN      an admin key, always (daemon control, loading and unloading, the log
             stream, the instances and the admin model listing `lms` reads)
- LOCAL      never: the Unix socket only (API keys, importing files on this machine)
"""

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from daemon.compat.errors import ErrorShape, openai_error


class Access(enum.Enum):
    PUBLIC = "public"
    INFERENCE = "inference"
    KEY = "key"
    ADMIN = "admin"
    LOCAL = "local"


PUBLIC = Access.PUBLIC
INFERENCE = Access.INFERENCE
KEY = Access.KEY
ADMIN = Access.ADMIN
LOCAL = Access.LOCAL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    errors: ErrorShape = openai_error  # the shape of this surface's error bodies


ACCESS = web.AppKey("access", dict)  # aiohttp route -> Access, filled by `register`
ERROR_SHAPES = web.AppKey("error_shapes", dict)  # aiohttp route -> ErrorShape


def register(app: web.Application, table: list[Route]) -> None:
    access: dict[web.AbstractRoute, Access] = {}
    shapes: dict[web.AbstractRoute, ErrorShape] = {}
    for route in table:
        added = app.router.add_route(route.method, route.path, route.handler)
        access[added] = route.access
        shapes[added] = route.errors
    app[ACCESS] = access
    app[ERROR_SHAPES] = shapes


def access_of(request: web.Request) -> Access:
    """The level of the route a request matched; an unknown route counts as INFERENCE,
    so that where keys are required it answers 401 before it could answer 404."""
    route = request.match_info.route
    return request.app[ACCESS].get(route, Access.INFERENCE)  # type: ignore[no-any-return]


def error_shape_of(request: web.Request) -> ErrorShape:
    """The error shape of the route a request matched (OpenAI's for unknown routes)."""
    shapes = request.app.get(ERROR_SHAPES, {})
    return shapes.get(request.match_info.route, openai_error)  # type: ignore[no-any-return]
