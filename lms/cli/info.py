"""`lms version` and `lms status`."""

import typer

from lms.api.version import API_VERSION, __version__
from lms.cli import output
from lms.cli.common import HostOption, JsonOption, PortOption, handle_errors, make_client
from lms.client import ClientError


@handle_errors
def version(json: JsonOption = False, host: HostOption = None, port: PortOption = None) -> None:
    """Print the CLI's version (and the daemon's, when it runs)."""
    try:
        daemon = make_client(host, port).status(timeout=2.0)
        daemon_version: dict[str, object] | None = {
            "version": daemon["version"],
            "api_version": daemon["api_version"],
        }
    except ClientError:
        daemon_version = None
    if json:
        output.json_out(
            {"version": __version__, "api_version": API_VERSION, "daemon": daemon_version}
        )
        return
    output.data(f"lms {__version__} (API {API_VERSION})")
    if daemon_version is not None:
        output.data(f"lmsd {daemon_version['version']} (API {daemon_version['api_version']})")


@handle_errors
def status(host: HostOption = None, port: PortOption = None) -> None:
    """A summary: the daemon, the server and its port."""
    try:
        daemon = make_client(host, port).status(timeout=5.0)
    except ClientError:
        output.data("Daemon: OFF\nServer: OFF\n\nStart it with: lms server start")
        raise typer.Exit(0) from None
    http = daemon["http"]
    server = f"ON (port: {http['port']})" if http["running"] else "OFF (start: lms server start)"
    output.data(f"Daemon: ON (lmsd v{daemon['version']}, PID {daemon['pid']})\nServer: {server}")
