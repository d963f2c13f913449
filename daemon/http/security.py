"""Who may call what, applied to every request that comes over TCP (the owner-only Unix
socket is trusted):

- DNS-rebinding protection: while bound to loopback, a request whose `Host` is not a
  loopback name is refused (403), as Ollama does;
- API keys: when authentication is on, a valid key (`Authorization: Bearer …` or
  `x-api-key`) is required (401); admin routes need an admin-scoped key (403);
- CORS: only origins on the allow-list (`*` for any) get CORS headers; a preflight from
  any other origin is refused.
"""

import ipaddress
from collections.abc import Callable, Collection

from aiohttp import web

from daemon.auth import ApiKey
from daemon.errors import Forbidden, LmsError, Unauthorized
from daemon.http.channel import via_unix_socket
from daemon.http.errors import Handler, response_for
from daemon.http.keys import CONTROL

PUBLIC_PATHS = frozenset({"/lmstudio-greeting", "/health"})
ADMIN_PREFIXES = ("/api/admin/", "/api/v1/models/load", "/api/v1/models/unload")
READ_ONLY_ADMIN = frozenset({"/api/admin/status"})
API_KEY = web.RequestKey("api_key", ApiKey)


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def presented_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return request.headers.get("x-api-key") or None


def is_admin_path(path: str) -> bool:
    return path.startswith(ADMIN_PREFIXES) and path not in READ_ONLY_ADMIN


def require_admin(request: web.Request) -> None:
    """State-changing admin calls: the Unix socket, or an admin key over TCP."""
    key = request.get(API_KEY)
    if via_unix_socket(request) or (key is not None and key.scope == "admin"):
        return
    raise Forbidden(
        f"{request.method} {request.path} needs the daemon's Unix socket (the `lms` CLI on "
        "this machine) or an admin API key"
    )


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if via_unix_socket(request):
        return await handler(request)
    control = request.app[CONTROL]
    try:
        _check_host(request, control.status()["http"]["bind"])
        _authenticate(request, control.keys.check, control.auth_required())
    except LmsError as exc:
        response = response_for(exc)
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


def _authenticate(
    request: web.Request, check: Callable[[str], ApiKey | None], required: bool
) -> None:
    secret = presented_key(request)
    key = check(secret) if secret else None
    if key is not None:
        request[API_KEY] = key
    if not required or request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return
    if key is None:
        raise Unauthorized(
            "Missing API key: send `Authorization: Bearer <key>`"
            if secret is None
            else "Incorrect API key provided"
        )
    if is_admin_path(request.path) and key.scope != "admin":
        raise Forbidden(
            f"{request.path} needs an admin-scoped API key; this key is {key.scope}-scoped"
        )


def cors_allows(origins: Collection[str], origin: str) -> bool:
    return "*" in origins or origin in origins
