"""`lms server start | stop | status`: the daemon's HTTP API on TCP."""

from typing import Annotated

import typer

from lms.api.admin import DaemonStatus, ServerStartRequest
from lms.api.version import API_VERSION
from lms.cli import output, server_config
from lms.cli.common import (
    EXIT_FAILURE,
    HostOption,
    JsonOption,
    PortOption,
    handle_errors,
    local_client,
    make_client,
)
from lms.cli.spawn import start_daemon
from lms.client import ApiVersionMismatch, DaemonNotRunning
from lms.units import is_loopback

app = typer.Typer(help="Start, stop and inspect the HTTP server.", no_args_is_help=True)
app.add_typer(server_config.config_app, name="config")
app.add_typer(server_config.key_app, name="key")


@app.command()
@handle_errors
def start(
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=0, max=65535, help="Port (default: the last one used)."),
    ] = None,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind", help="Address to listen on (default 127.0.0.1).", envvar="LMS_SERVER_HOST"
        ),
    ] = None,
    cors: Annotated[
        str | None,
        typer.Option(
            "--cors",
            metavar="[ORIGINS]",  # alone: "*" (main.bare_option_values)
            help="Let websites call the server: alone, any website (*); or a comma-separated "
            "allow-list of origins.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow binding beyond loopback without API keys."),
    ] = False,
) -> None:
    """Start the server (and the daemon, if it is not running)."""
    origins = [o.strip() for o in cors.split(",") if o.strip()] if cors is not None else None
    if origins is not None and "*" in origins:
        output.warn("CORS is enabled. This means any website you visit can use the server.")
    if bind is not None and not is_loopback(bind):
        output.warn(f"binding to {bind}: the server will be reachable from other machines.")
    client = local_client()
    request: ServerStartRequest = {}
    if port is not None:
        request["port"] = port
    if bind is not None:
        request["bind"] = bind
    if origins is not None:
        request["cors"] = origins
    try:
        running = client.status(timeout=5.0)
    except DaemonNotRunning:
        args = [f"--{name}={value}" for name, value in request.items() if name != "cors"]
        if origins is not None:
            args.append("--cors=" + ",".join(origins))
        if insecure:
            args.append("--insecure")
        status = start_daemon(client, args)
        # A service-managed daemon ignores our flags: apply them to the listener now.
        if request or not status["http"]["running"]:
            client.server_start(request)
    else:
        if insecure:
            output.error(
                "the daemon is already running: --insecure applies when it starts "
                "(`lms daemon down` first, or `lms server config set insecure true`)"
            )
            raise typer.Exit(EXIT_FAILURE)
        theirs = running.get("api_version")
        if theirs != API_VERSION:
            # Starting the listener still works (the control plane is version-free), but
            # every other command will refuse this daemon: say so now.
            said = None if theirs is None else str(theirs)
            output.warn(str(ApiVersionMismatch(client.where, said, local=True)))
        client.server_start(request)
    http = client.status()["http"]
    if not http["running"]:
        output.error("Failed to verify the server is running. Please try to use another port.")
        raise typer.Exit(EXIT_FAILURE)
    output.info(f"Success! Server is now running on port {http['port']}")


@app.command()
@handle_errors
def stop() -> None:
    """Stop the HTTP server (the daemon keeps running; `lms daemon down` stops it)."""
    try:
        result = local_client().server_stop()
    except DaemonNotRunning:
        output.info("The server is not running.")
        raise typer.Exit(EXIT_FAILURE) from None
    if not result["stopped"]:
        output.info("The server is not running.")
        raise typer.Exit(EXIT_FAILURE)
    output.info(f"Stopped the server on port {result['port']}.")


def server_status_json(status: DaemonStatus | None) -> dict[str, object]:
    if status is None or not status["http"]["running"]:
        return {"running": False}
    return {"running": True, "port": status["http"]["port"]}


@app.command()
@handle_errors
def status(json: JsonOption = False, host: HostOption = None, port: PortOption = None) -> None:
    """Whether the server is running, and on which port."""
    try:
        daemon_status: DaemonStatus | None = make_client(host, port).status(timeout=5.0)
    except DaemonNotRunning:
        daemon_status = None
    summary = server_status_json(daemon_status)
    if json:
        output.json_out(summary)
    elif summary["running"]:
        output.data(f"The server is running on port {summary['port']}.")
    else:
        output.data("The server is not running.")
