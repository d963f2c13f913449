"""`lms daemon up | down | status`: the lmsd process itself."""

import time
from typing import Annotated

import typer

from lms.cli import output
from lms.cli.common import (
    EXIT_DAEMON_NOT_RUNNING,
    EXIT_FAILURE,
    JsonOption,
    handle_errors,
    local_client,
)
from lms.cli.spawn import start_daemon
from lms.client import DaemonNotRunning

app = typer.Typer(help="Start, stop and inspect the lmsd daemon.", no_args_is_help=True)

STOP_TIMEOUT_SECONDS = 60.0


@app.command()
@handle_errors
def up(json: JsonOption = False) -> None:
    """Start the daemon in the background if it is not running."""
    client = local_client()
    try:
        status = client.status(timeout=5.0)
        started = False
    except DaemonNotRunning:
        status = start_daemon(client, [])
        started = True
    if json:
        output.json_out({"status": "running", "pid": status["pid"], "version": status["version"]})
    elif started:
        output.info(f"lmsd started (PID: {status['pid']}).")
    else:
        output.info(f"The daemon is already running (PID: {status['pid']}).")


@app.command()
@handle_errors
def down() -> None:
    """Stop the daemon: in-flight requests finish first, then models are unloaded."""
    client = local_client()
    try:
        pid = client.status(timeout=5.0)["pid"]
        client.shutdown()
    except DaemonNotRunning:
        output.info("The daemon is not running.")
        raise typer.Exit(EXIT_DAEMON_NOT_RUNNING) from None
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            output.info(f"Daemon stopped (PID: {pid}).")
            return
        time.sleep(0.05)
    output.error(f"the daemon (PID: {pid}) is still shutting down after {STOP_TIMEOUT_SECONDS}s")
    raise typer.Exit(EXIT_FAILURE)


def _process_alive(pid: int) -> bool:
    """True until the daemon has exited (a zombie awaiting its parent counts as exited)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@app.command()
@handle_errors
def status(json: JsonOption = False) -> None:
    """Whether the daemon is running, its PID and version."""
    try:
        status = local_client().status(timeout=5.0)
    except DaemonNotRunning:
        if json:
            output.json_out({"status": "not-running"})
        else:
            output.data("The daemon is not running.")
        return
    if json:
        output.json_out({"status": "running", "pid": status["pid"], "version": status["version"]})
    else:
        output.data(f"lmsd v{status['version']} is running (PID: {status['pid']})")


@app.command()
@handle_errors
def install(
    system: Annotated[
        bool, typer.Option("--system", help="System-wide, as the `lmsd` user (needs root).")
    ] = False,
    no_start: Annotated[
        bool, typer.Option("--no-start", help="Install and enable, but do not start now.")
    ] = False,
) -> None:
    """Run lmsd at boot: install a systemd (Linux) or launchd (macOS) service."""
    from lms import service

    try:
        planned = service.plan(system=system)
        service.install(planned, start=not no_start)
    except service.ServiceError as exc:
        output.error(str(exc))
        raise typer.Exit(EXIT_FAILURE) from None
    output.info(f"Installed {planned.target}")
    if planned.staged:
        output.info("Staged under LMS_SERVICE_ROOT: no service manager was touched.")
    elif no_start:
        output.info("Enabled at boot; start it now with `lms daemon up`.")
    else:
        output.info("Enabled at boot and started.")


@app.command()
@handle_errors
def uninstall(
    system: Annotated[bool, typer.Option("--system", help="The system-wide service.")] = False,
) -> None:
    """Stop running lmsd at boot and remove its service."""
    from lms import service

    try:
        removed = service.uninstall(service.plan(system=system))
    except service.ServiceError as exc:
        output.error(str(exc))
        raise typer.Exit(EXIT_FAILURE) from None
    output.info("Service removed." if removed else "No lmsd service is installed.")
