"""Web pages: a page the owner visits may send "simple" cross-site requests (a form post,
`fetch` with `mode: "no-cors"` and a `text/plain` body) that the browser sends without
asking first. CORS only hides the answer from the page; the request would still load,
unload, shut down or generate. So every request over TCP that a browser marks as coming
from another site is refused (403) unless its origin is on the CORS allow-list (setting
`cors`):

- an `Origin` header that the allow-list does not permit;
- `Sec-Fetch-Site: cross-site` or `same-site` (a page on another loopback port is
  same-site) without an allowed `Origin`.

Requests without these headers (curl, SDKs, the CLI) are unaffected, and so are the
public routes (the greeting, health) and the Unix socket. CORS preflights never get
here: app.py answers them.
"""

from aiohttp import web

from daemon.errors import Forbidden
from daemon.http.channel import via_unix_socket
from daemon.http.errors import Handler, response_for
from daemon.http.keys import CONTROL
from daemon.http.routes import Access, access_of, error_shape_of
from daemon.http.security import cors_allows

FOREIGN_SITES = ("cross-site", "same-site")


class CrossSiteRefused(Forbidden):
    code = "cross_origin_refused"


def cross_site_refusal(request: web.Request) -> CrossSiteRefused | None:
    """Why this request from a web page on another origin is refused; None to let it in."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and cors_allows(request.app[CONTROL].cors, origin)
    if allowed:
        return None
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if origin is None and fetch_site not in FOREIGN_SITES:
        return None
    source = f"origin {origin!r}" if origin is not None else f"a {fetch_site} web page"
    return CrossSiteRefused(
        f"{request.method} {request.path} from {source} is refused: that origin is not "
        "allowed (see the `cors` setting, `lms server start --cors <origin>`)"
    )


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if via_unix_socket(request) or access_of(request) is Access.PUBLIC:
        return await handler(request)
    refusal = cross_site_refusal(request)
    if refusal is not None:
        return response_for(refusal, error_shape_of(request))
    return await handler(request)
