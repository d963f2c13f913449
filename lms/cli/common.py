"""What every command shares: exit codes, connection options, the client, error handling."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Annotated, ParamSpec, TypeVar

import typer

from lms.cli import output
from lms.client import ApiError, Client, ClientError, DaemonNotRunning
from lms.paths import resolve_paths

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_USAGE = 2  # what click uses for a bad option or argument
# Fixed, so scripts can tell "the daemon is down" from other failures.
EXIT_DAEMON_NOT_RUNNING = 3

HostOption = Annotated[
    str | None,
    typer.Option("--host", help="Reach a remote daemon over TCP at this host (no scheme)."),
]
PortOption = Annotated[
    int | None,
    typer.Option("--port", min=1, max=65535, help="TCP port of a remote daemon (default 1234)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@dataclass(frozen=True)
class Remote:
    """`lms --host HOST[:PORT] --api-key KEY` (or LMS_HOST, LMS_API_KEY): the daemon every
    command that makes sense remotely talks to."""

    host: str | None = None
    port: int | None = None
    api_key: str | None = None


_remote = Remote()


def parse_host(value: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (no scheme)."""
    if "://" in value:
        raise typer.BadParameter("give HOST[:PORT] without a scheme", param_hint="--host")
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise typer.BadParameter("an IPv6 host needs its closing ']'", param_hint="--host")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise typer.BadParameter("expected [HOST]:PORT", param_hint="--host")
            port = _port(rest[1:])
    elif value.count(":") == 1:
        host, text = value.split(":")
        port = _port(text)
    if not host:
        raise typer.BadParameter("the host is empty", param_hint="--host")
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise typer.BadParameter(f"{text!r} is not a TCP port (1-65535)", param_hint="--host")
    return int(text)


def set_remote(host: str | None, api_key: str | None) -> None:
    global _remote
    if host is None:
        _remote = Remote(api_key=api_key)
        return
    name, port = parse_host(host)
    _remote = Remote(name, port, api_key)


def local_client(timeout: float = 30.0) -> Client:
    """The daemon on this machine, over its Unix socket; a command that calls this only
    makes sense locally, and says so when `lms --host` names another daemon."""
    if _remote.host is not None:
        output.error(
            f"this command works only with the daemon on this machine, not {_remote.host} "
            "(drop --host, or unset LMS_HOST)"
        )
        raise typer.Exit(EXIT_BAD_USAGE)
    return Client(socket_path=resolve_paths().socket, timeout=timeout)


def make_client(host: str | None, port: int | None, timeout: float = 30.0) -> Client:
    if host is None and port is None:
        if _remote.host is None:
            return local_client(timeout)
        return Client(
            host=_remote.host, port=_remote.port, timeout=timeout, api_key=_remote.api_key
        )
    if host is not None and ("://" in host or ":" in host.strip("[]")):
        raise typer.BadParameter("give the host without scheme or port", param_hint="--host")
    return Client(
        host=host or _remote.host or "127.0.0.1",
        port=port or _remote.port,
        timeout=timeout,
        api_key=_remote.api_key,
    )


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Client errors become one line on stderr and a fixed exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DaemonNotRunning as exc:
            output.error(str(exc))
            raise typer.Exit(EXIT_DAEMON_NOT_RUNNING) from None
        except ApiError as exc:
            output.error(str(exc))
            raise typer.Exit(EXIT_FAILURE) from None
        except ClientError as exc:
            output.error(str(exc))
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper
