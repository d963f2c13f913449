"""HTTP to the daemon over its Unix socket (or TCP with --host/--port), and the errors
the CLI shows as one line.

Built on the standard library's http.client so `lms` starts fast. Daemon errors arrive in
the OpenAI envelope and become `ApiError`s, a missing daemon `DaemonNotRunning`, a daemon
that speaks another API version `ApiVersionMismatch`.
"""

import http.client
import json
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

from lms.api.errors import ErrorBody, parse_error
from lms.api.version import API_VERSION, API_VERSION_HEADER


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


class ApiVersionMismatch(ClientError):
    """The daemon speaks another API version than this lms, or does not say which
    (`theirs` None: an lmsd older than the header, or not lmsd at all)."""

    def __init__(self, where: str, theirs: str | None, *, local: bool) -> None:
        if theirs is None:
            said = (
                "did not say which API version it speaks (it is older than this lms, or not lmsd)"
            )
        else:
            said = f"speaks API version {theirs} but this lms speaks {API_VERSION}"
        if local:
            fix = (
                "restart it with `lms daemon down` then `lms server start` "
                "so both come from the same install"
            )
        else:
            fix = "check --host/--port, and run the same lmsd version there as this lms"
        super().__init__(f"the daemon ({where}) {said}: {fix}")
        self.where = where
        self.theirs = theirs
        self.ours = API_VERSION


class StreamError(ClientError):
    """An error event inside a streamed answer."""


def json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _api_error(response: http.client.HTTPResponse, raw: bytes) -> ApiError:
    body: ErrorBody = parse_error(json_or_none(raw)) or {
        "message": f"HTTP {response.status} {response.reason}",
        "type": "error",
        "param": None,
        "code": None,
    }
    return ApiError(response.status, body)


def _close(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    # Both: once a response says the connection will close, http.client hands the socket
    # to the response, and closing the connection alone leaves it open.
    response.close()
    conn.close()


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


class Transport:
    """One daemon's address and the raw calls to it.

    The daemon sends its API version in the `X-Lmsd-Api-Version` header of every
    response. The first checked response is compared with this lms's API_VERSION, once
    per Transport; a missing or different version raises `ApiVersionMismatch` (on that
    call and every later checked one), so the CLI never misreads another version's
    shapes. Calls made with `check_version=False` skip it: they are the control plane
    (lms/api/admin.py), frozen across versions.
    """

    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        host: str | None = None,
        port: int | None = None,
        timeout: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        if socket_path is None and host is None:
            raise ValueError("need a socket path or a host")
        self.socket_path = socket_path
        self.host = host
        self.port = port or 1234
        self.timeout = timeout
        self.api_key = api_key  # sent over TCP only (the Unix socket needs none)
        self._version_checked = False

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

    def _check_version(self, response: http.client.HTTPResponse) -> None:
        theirs = response.getheader(API_VERSION_HEADER)
        try:
            same = theirs is not None and int(theirs) == API_VERSION
        except ValueError:
            same = False
        if not same:
            raise ApiVersionMismatch(self.where, theirs, local=self.host is None)
        self._version_checked = True

    def _send(
        self, method: str, path: str, body: Any, timeout: float | None, check_version: bool
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(timeout)
        headers = {"Accept": "application/json"}
        if self.api_key is not None and self.host is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
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
        if check_version and not self._version_checked:
            try:
                # Before the status: another version's error replies may differ too.
                self._check_version(response)
            except ApiVersionMismatch:
                _close(conn, response)
                raise
        return conn, response

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        check_version: bool = True,
    ) -> Any:
        """The decoded JSON reply (None when empty or not JSON); errors as exceptions."""
        conn, response = self._send(method, path, body, timeout, check_version)
        try:
            raw = response.read()
        finally:
            _close(conn, response)
        if response.status >= 400:
            raise _api_error(response, raw)
        return json_or_none(raw)

    def stream_lines(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Generator[str, None, None]:
        """The response body line by line (for SSE and NDJSON); errors as for request().
        Closing the generator closes the connection."""
        conn, response = self._send(method, path, body, timeout, True)
        try:
            if response.status >= 400:
                raise _api_error(response, response.read())
            for line in response:
                yield line.decode("utf-8").rstrip("\r\n")
        finally:
            _close(conn, response)
