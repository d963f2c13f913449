"""Which listener a request came through: the owner-only Unix socket, or TCP."""

from aiohttp import web

from daemon.errors import Forbidden


def via_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    # A Unix socket's local address is its path (a str); a TCP socket's is a tuple.
    return isinstance(transport.get_extra_info("sockname"), str | bytes)


def require_unix_socket(request: web.Request) -> None:
    """Until API keys exist, state-changing admin calls are refused over TCP."""
    if not via_unix_socket(request):
        raise Forbidden(
            f"{request.method} {request.path} is only accepted over the daemon's Unix socket "
            "(use the `lms` CLI on this machine)"
        )
