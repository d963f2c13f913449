"""The remote upstreams: list, add, remove, and per-model routing policies. All admin:
adding an upstream makes the daemon send requests (and a key) to a URL of the caller's
choosing. Keys go in, never out."""

from typing import Any, cast

from aiohttp import web

from daemon.errors import InvalidRequest
from daemon.http.errors import read_json_object
from daemon.http.keys import UPSTREAMS
from daemon.http.routes import ADMIN, Route
from daemon.remote.config import check_policy, upstream_from_dict
from daemon.remote.pool import UpstreamPool
from lms.api import upstreams as api


def _listing(pool: UpstreamPool) -> api.UpstreamListing:
    return {
        "upstreams": [cast(api.UpstreamStatus, u.status()) for u in pool.upstreams()],
        "policies": dict(pool.store.policies),
    }


async def list_upstreams(request: web.Request) -> web.Response:
    return web.json_response(_listing(request.app[UPSTREAMS]))


async def add_upstream(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    replace = body.pop("replace", False)
    if not isinstance(replace, bool):
        raise InvalidRequest("'replace' must be true or false", param="replace")
    known = set(api.UpstreamRequest.__annotations__)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
    pool = request.app[UPSTREAMS]
    upstream = await pool.add(upstream_from_dict(body), replace_existing=replace)
    return web.json_response(upstream.status())


async def remove_upstream(request: web.Request) -> web.Response:
    request.app[UPSTREAMS].remove(request.match_info["name"])
    return web.json_response(_listing(request.app[UPSTREAMS]))


async def set_policy(request: web.Request) -> web.Response:
    body: dict[str, Any] = await read_json_object(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a model key", param="model")
    policy = body.get("policy")
    request.app[UPSTREAMS].store.set_policy(model, None if policy is None else check_policy(policy))
    return web.json_response(_listing(request.app[UPSTREAMS]))


def routes() -> list[Route]:
    return [
        Route("GET", api.UPSTREAMS_PATH, list_upstreams, ADMIN),
        Route("POST", api.UPSTREAMS_PATH, add_upstream, ADMIN),
        Route("POST", api.POLICY_PATH, set_policy, ADMIN),
        Route("DELETE", api.UPSTREAMS_PATH + "/{name}", remove_upstream, ADMIN),
    ]
