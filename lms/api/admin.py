"""Shapes and routes of the admin endpoints the CLI uses to drive the daemon.

These are the control plane: `lms` reaches them without checking the daemon's API
version (see lms/transport.py), so that any `lms` can find, start and stop any `lmsd`.
Their shapes must therefore never change; add fields, never rename or remove one.
"""

from typing import Literal, TypedDict

STATUS_PATH = "/api/admin/status"
SHUTDOWN_PATH = "/api/admin/shutdown"
SERVER_START_PATH = "/api/admin/server/start"
SERVER_STOP_PATH = "/api/admin/server/stop"
GREETING_PATH = "/lmstudio-greeting"
HEALTH_PATH = "/health"


class HttpListener(TypedDict):
    """The TCP listener; also the reply of `POST /api/admin/server/start`."""

    running: bool
    bind: str
    port: int
    cors: list[str]  # browser origins allowed ("*": any); empty when CORS is off


class DaemonStatus(TypedDict):
    """`GET /api/admin/status`."""

    status: str  # always "running" when the daemon answers
    version: str
    api_version: int
    pid: int
    uptime_seconds: float
    socket: str
    http: HttpListener


class ServerStartRequest(TypedDict, total=False):
    """`POST /api/admin/server/start`: absent fields keep the listener's current values."""

    port: int
    bind: str
    cors: list[str]


class ServerStopReply(HttpListener):
    """`POST /api/admin/server/stop`: the listener as it now is (not running)."""

    stopped: bool  # False: it was not running


class ShutdownReply(TypedDict):
    """`POST /api/admin/shutdown`: the daemon stops once this reply is sent."""

    status: Literal["stopping"]
    pid: int
