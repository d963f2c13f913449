"""Zero-config discovery for LM Studio's SDKs: `lms.llm()` / `new LMStudioClient()` with no
host probe `GET http://127.0.0.1:<port>/lmstudio-greeting` on LM Studio's own API ports
(41343, 52993, 16141, 39414, 22931 in lmstudio 1.5.0 and @lmstudio/sdk 1.5.0; neither
reads a file). So while the HTTP listener is up, the daemon also listens on 127.0.0.1:41343,
the first of them, serving the same app (the SDK's WebSockets, the greeting, everything).

It never steps on LM Studio: when any of those ports is already taken (LM Studio, llmster,
another lmsd), the daemon leaves them all alone and the SDKs keep finding that server.
Setting `sdk_discovery` false turns it off. The listener follows the HTTP listener: it
starts and stops with it (`lms server start|stop`).
"""

import asyncio
import logging
from contextlib import suppress

from aiohttp import web

from daemon.http.limits import LimitedTCPSite

log = logging.getLogger(__name__)

LMSTUDIO_SDK_PORTS = (41343, 52993, 16141, 39414, 22931)
HOST = "127.0.0.1"


async def _taken(port: int) -> bool:
    """Whether something accepts connections on loopback `port`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


class SdkDiscovery:
    def __init__(self) -> None:
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int | None:
        return LMSTUDIO_SDK_PORTS[0] if self._site is not None else None

    async def start(self, runner: web.BaseRunner, *, enabled: bool, max_connections: int) -> None:
        if not enabled or self._site is not None:
            return
        for port in LMSTUDIO_SDK_PORTS:
            if await _taken(port):
                log.info("port %d (LM Studio's) is in use: SDK discovery left to that server", port)
                return
        site = LimitedTCPSite(runner, HOST, LMSTUDIO_SDK_PORTS[0], max_connections=max_connections)
        try:
            await site.start()
        except OSError as exc:
            log.info("SDK discovery port %d unavailable: %s", LMSTUDIO_SDK_PORTS[0], exc)
            return
        self._site = site
        log.info("LM Studio SDKs find this server with no host (on %s:%d)", HOST, self.port)

    async def stop(self) -> None:
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
