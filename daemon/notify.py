"""systemd's readiness protocol (sd_notify): `READY=1` once the sockets listen,
`WATCHDOG=1` pings at half the `WatchdogSec` interval, `STOPPING=1` on shutdown.
A datagram to $NOTIFY_SOCKET; a no-op when not started by systemd."""

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class ServiceNotifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_seconds = _watchdog_interval(env)
        self._pinger: asyncio.Task[None] | None = None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        # A leading "@" names a socket in the abstract namespace.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        if self.send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}"):
            log.info("told the service manager we are ready")
        if self.watchdog_seconds is not None and self.address is not None:
            self._pinger = asyncio.create_task(self._ping_forever(self.watchdog_seconds))

    async def _ping_forever(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stopping(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        self.send("STOPPING=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
