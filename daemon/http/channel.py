"""Which listener a request came through: the owner-only Unix socket, or TCP."""

from aiohttp import web


def via_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    # A Unix socket's local address is its path (a str); a TCP socket's is a tuple.
    return isinstance(transport.get_extra_info("sockname"), str | bytes)
