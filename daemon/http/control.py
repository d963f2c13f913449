"""What the admin routes need from the daemon, as a protocol so http/ never imports main."""

from pathlib import Path
from typing import Protocol

from daemon.auth import KeyStore
from daemon.config import Settings
from lms.api.admin import DaemonStatus


class DaemonControl(Protocol):
    settings: Settings
    keys: KeyStore
    config_file: Path

    async def apply_setting(self, key: str, new: Settings) -> bool:
        """Persist `new` (changed in `key`) to the config file and apply it; True when it
        took effect now, False when it needs a restart."""

    def status(self) -> DaemonStatus: ...

    @property
    def cors(self) -> tuple[str, ...]:
        """Browser origins allowed to call the API ("*": any)."""

    def auth_required(self) -> bool:
        """Whether TCP requests must present an API key."""

    async def start_http(
        self, *, port: int | None, bind: str | None, cors: list[str] | None
    ) -> None:
        """Start the TCP listener, or move it when it runs with other settings."""

    async def stop_http(self) -> bool:
        """Stop the TCP listener; False when it was not running."""

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown once the current response has been sent."""
