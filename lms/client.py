"""The CLI's channel to the daemon: HTTP over its Unix socket, or TCP with --host/--port.

Built on the standard library's http.client so `lms` starts fast; daemon errors arrive
in the OpenAI envelope and become `ApiError`s, a missing daemon `DaemonNotRunning`.
"""

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from lms.api import admin
from lms.api.errors import ErrorBody, parse_error


class ClientError(Exception):
    """Base of the errors the CLI shows as one line."""


class DaemonNotRunning(ClientError):
    def __init__(self, where: str) -> None:
        super().__init__(f"the daemon is not running ({where}); start it with `lms server start`")
        self.where = where


class ApiError(ClientError):
    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(body["message"])
        self.status = status
        self.body = body


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _api_error(response: http.client.HTTPResponse, raw: bytes) -> ApiError:
    body: ErrorBody = parse_error(_json_or_none(raw)) or {
        "message": f"HTTP {response.status} {response.reason}",
        "type": "error",
        "param": None,
        "code": None,
    }
    return ApiError(response.status, body)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        host: str | None = None,
        port: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        if socket_path is None and host is None:
            raise ValueError("need a socket path or a host")
        self.socket_path = socket_path
        self.host = host
        self.port = port or 1234
        self.timeout = timeout

    @property
    def where(self) -> str:
        if self.host is not None:
            return f"http://{self.host}:{self.port}"
        return f"socket {self.socket_path}"

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        timeout = self.timeout if timeout is None else timeout
        if self.host is not None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        assert self.socket_path is not None
        return UnixHTTPConnection(self.socket_path, timeout)

    def _send(
        self, method: str, path: str, body: Any, timeout: float | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise DaemonNotRunning(self.where) from exc
        except TimeoutError as exc:
            conn.close()
            raise ClientError(f"the daemon did not answer in time ({self.where})") from exc
        except OSError as exc:
            conn.close()
            if self.host is None:
                raise DaemonNotRunning(self.where) from exc
            raise ClientError(f"cannot reach the daemon at {self.where}: {exc}") from exc

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        conn, response = self._send(method, path, body, timeout)
        try:
            raw = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise _api_error(response, raw)
        return _json_or_none(raw)

    def stream_lines(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Iterator[str]:
        """The response body line by line (for SSE and NDJSON); errors as for request()."""
        conn, response = self._send(method, path, body, timeout)
        try:
            if response.status >= 400:
                raise _api_error(response, response.read())
            for line in response:
                yield line.decode("utf-8").rstrip("\r\n")
        finally:
            conn.close()

    # -- admin ---------------------------------------------------------------------------

    def status(self, *, timeout: float | None = None) -> admin.DaemonStatus:
        return cast(admin.DaemonStatus, self.request("GET", admin.STATUS_PATH, timeout=timeout))

    def shutdown(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("POST", admin.SHUTDOWN_PATH, {}))

    def server_start(self, request: admin.ServerStartRequest) -> admin.HttpListener:
        return cast(admin.HttpListener, self.request("POST", admin.SERVER_START_PATH, request))

    def server_stop(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("POST", admin.SERVER_STOP_PATH, {}))
