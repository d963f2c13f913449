"""Starting the daemon detached: its own session, no terminal, stderr to a startup log,
so it survives the shell that started it."""

import os
import subprocess
import sys
import time

from lms.api.admin import DaemonStatus
from lms.client import Client, ClientError, DaemonNotRunning
from lms.paths import resolve_paths

READY_TIMEOUT_SECONDS = 60.0


class SpawnFailed(ClientError):
    pass


def spawn_daemon(args: list[str]) -> subprocess.Popen[bytes]:
    paths = resolve_paths()
    try:
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        startup_log = open(paths.startup_log_file, "wb")  # noqa: SIM115 - handed to the child
    except OSError as exc:
        raise SpawnFailed(f"cannot write the daemon's log in {paths.log_dir}: {exc}") from exc
    with startup_log:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "--detached", *args],
            stdin=subprocess.DEVNULL,
            stdout=startup_log,
            stderr=startup_log,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=os.environ.copy(),
        )


def start_daemon(client: Client, args: list[str]) -> DaemonStatus:
    """Starts the daemon through the service manager when its service is installed (so
    it stays supervised), else spawns it detached; returns once it answers."""
    from lms import service

    installed = service.installed_plan()
    if installed is None:
        return wait_until_ready(client, spawn_daemon(args))
    try:
        service.start_service(installed)
    except service.ServiceError as exc:
        raise SpawnFailed(str(exc)) from exc
    return wait_until_ready(client, None)


def wait_until_ready(client: Client, process: subprocess.Popen[bytes] | None) -> DaemonStatus:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            return client.status(timeout=2.0)
        except DaemonNotRunning:
            pass
        if process is not None and process.poll() is not None:
            # Lost a race with another `lms server start`? Then that daemon will answer.
            try:
                return client.status(timeout=2.0)
            except DaemonNotRunning:
                raise SpawnFailed(_startup_failure(process.returncode)) from None
        time.sleep(0.05)
    raise SpawnFailed(f"the daemon did not answer within {READY_TIMEOUT_SECONDS:.0f}s")


def _startup_failure(returncode: int) -> str:
    log_file = resolve_paths().startup_log_file
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    # The daemon prints one `lmsd: error: ...` line that says why it could not start; the
    # CLI says "Error: " itself, so the daemon's own "error: " is dropped.
    reasons = [
        line.removeprefix("lmsd: ").removeprefix("error: ")
        for line in lines
        if line.startswith("lmsd: ")
    ]
    if reasons:
        return reasons[-1]
    tail = next((line for line in reversed(lines) if line), "")
    return f"the daemon exited with code {returncode}" + (f": {tail}" if tail else "")
