"""Who may call what, applied by one middleware to every request that comes over TCP
(the owner-only Unix socket is trusted):

- DNS-rebinding protection: while bound to loopback, a request whose `Host` is not a
  loopback name is refused (403), as Ollama does;
- the route's access level (routes.py): API keys (`Authorization: Bearer …` or
  `x-api-key`) where keys are required or the level always needs one (401 without one,
  or with a wrong one), an admin-scoped key for the admin level (403 without one), and
  the Unix-socket-only routes refused (403);
- CORS: only origins on the allow-list (`*` for any) get CORS headers; a preflight from
  any other origin is refused (app.py).
"""

from collections.abc import Callable, Collection

from aiohttp import web

from daemon.auth import ApiKey
from daemon.errors import Forbidden, LmsError, Unauthorized
from daemon.http.channel import via_unix_socket
from daemon.http.errors import Handler, response_for
from daemon.http.keys import CONTROL
from daemon.http.routes import Access, access_of, error_shape_of
from lms.units import is_loopback

API_KEY = web.RequestKey("api_key", ApiKey)


def host_name(header: str) -> str:
    header = header.lower()  # host names are case-insensitive: LOCALHOST is localhost
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def presented_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return request.headers.get("x-api-key") or None


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if via_unix_socket(request):
        return await handler(request)
    control = request.app[CONTROL]
    try:
        _check_host(request, control.status()["http"]["bind"])
        if request.method != "OPTIONS":  # preflights carry no key (app.py answers them)
            _check_access(request, control.keys.check, control.auth_required())
    except LmsError as exc:
        response = response_for(exc, error_shape_of(request))
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="lmsd"'
        return response
    return await handler(request)


def _check_host(request: web.Request, bind: str) -> None:
    header = request.headers.get("Host")
    if header is None or not is_loopback(bind):
        return
    name = host_name(header)
    if not (is_loopback(name) or name == bind):
        raise Forbidden(
            f"requests for host {name!r} are refused while the server is bound to {bind} "
            "(DNS-rebinding protection)"
        )


def _check_access(
    request: web.Request, check: Callable[[str], ApiKey | None], required: bool
) -> None:
    access = access_of(request)
    if access is Access.PUBLIC:
        return
    if access is Access.LOCAL:
        raise Forbidden(
            f"{request.method} {request.path} is only accepted over the daemon's Unix socket "
            "(use the `lms` CLI on this machine)"
        )
    secret = presented_key(request)
    key = check(secret) if secret else None
    if key is not None:
        request[API_KEY] = key
    route = f"{request.method} {request.path}"
    if key is None and secret is not None and (required or access is not Access.INFERENCE):
        raise Unauthorized("Incorrect API key provided")
    if key is None and (required or access is Access.KEY):
        raise Unauthorized(
            "Missing API key: send `Authorization: Bearer <key>`"
            if access is Access.INFERENCE
            else f"Missing API key: {route} needs {_NEEDS[access]}; "
            "send `Authorization: Bearer <key>`"
        )
    if access is Access.ADMIN and (key is None or key.scope != "admin"):
        scoped = "" if key is None else f"; this key is {key.scope}-scoped"
        raise Forbidden(f"{route} needs {_NEEDS[access]}{scoped}")


_NEEDS = {
    Access.KEY: "an API key of any scope (create one with `lms server key create`)",
    Access.ADMIN: "the daemon's Unix socket (the `lms` CLI on this machine) or an admin API key",
}


def cors_allows(origins: Collection[str], origin: str) -> bool:
    return "*" in origins or origin in origins
