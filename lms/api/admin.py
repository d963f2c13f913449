"""Shapes and routes of the admin endpoints the CLI uses to drive the daemon."""

from typing import TypedDict

STATUS_PATH = "/api/admin/status"
SHUTDOWN_PATH = "/api/admin/shutdown"
SERVER_START_PATH = "/api/admin/server/start"
SERVER_STOP_PATH = "/api/admin/server/stop"
GREETING_PATH = "/lmstudio-greeting"
HEALTH_PATH = "/health"


class HttpListener(TypedDict):
    running: bool
    bind: str
    port: int
    cors: list[str]  # browser origins allowed ("*": any); empty when CORS is off


class DaemonStatus(TypedDict):
    status: str  # always "running" when the daemon answers
    version: str
    api_version: int
    pid: int
    uptime_seconds: float
    socket: str
    http: HttpListener


class ServerStartRequest(TypedDict, total=False):
    port: int
    bind: str
    cors: list[str]
