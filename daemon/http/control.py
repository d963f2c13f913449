"""What the admin routes need from the daemon, as a protocol so http/ never imports main."""

from typing import Protocol

from lms.api.admin import DaemonStatus


class DaemonControl(Protocol):
    def status(self) -> DaemonStatus: ...

    @property
    def cors(self) -> bool: ...

    async def start_http(self, *, port: int | None, bind: str | None, cors: bool | None) -> None:
        """Start the TCP listener, or move it when it runs with other settings."""

    async def stop_http(self) -> bool:
        """Stop the TCP listener; False when it was not running."""

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown once the current response has been sent."""
