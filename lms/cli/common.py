"""What every command shares: exit codes, connection options, the client, error handling."""

from collections.abc import Callable
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


def local_client(timeout: float = 30.0) -> Client:
    return Client(socket_path=resolve_paths().socket, timeout=timeout)


def make_client(host: str | None, port: int | None, timeout: float = 30.0) -> Client:
    if host is None and port is None:
        return local_client(timeout)
    if host is not None and ("://" in host or ":" in host.strip("[]")):
        raise typer.BadParameter("give the host without scheme or port", param_hint="--host")
    return Client(host=host or "127.0.0.1", port=port, timeout=timeout)


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
