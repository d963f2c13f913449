"""The daemon: its inference core, its HTTP app and its listeners, the owner-only Unix
socket (always) and the TCP HTTP API.

`Daemon` is the composition root's one object (daemon/main.py makes it): it builds the
core (core.py) and the app around it, owns the aiohttp runner and both sites, and is
the `DaemonControl` the admin routes drive (start/stop/move the TCP listener, shutdown,
status, settings).
"""

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from daemon.auth import KeyStore
from daemon.config import Settings, save_setting
from daemon.core import Core
from daemon.engines.handle import EngineStarter, start_engine
from daemon.errors import LmsError, StartupError
from daemon.events import EventLogHandler
from daemon.fsutil import atomic_write_text
from daemon.http.app import create_app
from daemon.http.image_fetch import WebImageFetcher
from daemon.http.limits import HttpLimits, LimitedTCPSite, body_timeout_middleware
from daemon.http.sdk_discovery import SdkDiscovery
from daemon.model_store import models_dirs_for
from lms.api.admin import DaemonStatus, HttpListener
from lms.api.version import API_VERSION, __version__
from lms.paths import Paths
from lms.units import is_loopback

log = logging.getLogger(__name__)

# Linux allows 108 bytes in sun_path, macOS 104.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class HttpConfig:
    bind: str
    port: int
    cors: tuple[str, ...]  # allowed browser origins; "*" for any


# Settings that only take effect when the daemon starts.
RESTART_ONLY = frozenset(
    {"http", "shutdown_timeout", "max_body_bytes", "restore_on_restart", "preload"}
)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        paths: Paths,
        config_file: Path,
        *,
        starter: EngineStarter = start_engine,
        limits: HttpLimits = HttpLimits(),
    ) -> None:
        self.settings = settings
        self.paths = paths
        self.config_file = config_file
        self._started_at = time.monotonic()
        self._http = HttpConfig(bind=settings.bind, port=settings.port, cors=tuple(settings.cors))
        self.keys = KeyStore(paths.state_dir / "api-keys.json")
        self.core = Core(
            settings,
            data_dir=paths.data_dir,
            state_dir=paths.state_dir,
            starter=starter,
            config_dir=paths.config_dir,
            image_fetcher=WebImageFetcher(),
        )
        self.limits = limits
        self.app = create_app(self, self.core)
        # Innermost: the body is read (within its time limit) once access is granted.
        self.app.middlewares.append(body_timeout_middleware(limits.body_timeout))
        self._runner: web.AppRunner | None = None
        self._tcp_site: web.TCPSite | None = None
        self._sdk_discovery = SdkDiscovery()  # LM Studio SDKs with no host find us
        self._stopping = asyncio.Event()
        self._event_log: EventLogHandler | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        socket_path = self.paths.socket
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise StartupError(f"socket path too long for the OS: {socket_path}")
        # Server logs also go to `lms log stream --source server`.
        self._event_log = EventLogHandler(self.core.events, asyncio.get_running_loop())
        logging.getLogger().addHandler(self._event_log)
        self.core.start()
        self._runner = web.AppRunner(
            self.app,
            # A client that disconnects cancels its handler: generation stops at once.
            handler_cancellation=True,
            shutdown_timeout=self.settings.shutdown_timeout,
            access_log=logging.getLogger("aiohttp.access"),
            # A connection that sends no complete request in this time is closed.
            keepalive_timeout=self.limits.header_timeout,
        )
        await self._runner.setup()
        # We hold the instance lock, so a socket file left here belongs to a dead daemon.
        socket_path.unlink(missing_ok=True)
        previous_umask = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(socket_path)).start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {socket_path}: {exc.strerror}") from exc
        finally:
            os.umask(previous_umask)
        os.chmod(socket_path, 0o600)
        log.info("listening on unix:%s", socket_path)
        if self.settings.http:
            await self.start_http(port=None, bind=None, cors=None)

    async def wait_for_shutdown_request(self) -> None:
        await self._stopping.wait()

    def request_shutdown(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish up to the deadline, close all."""
        # Open log streams end now, so they never hold up the drain below.
        self.core.events.close()
        if self._runner is not None:
            log.info(
                "shutting down: waiting up to %.0fs for in-flight requests",
                self.settings.shutdown_timeout,
            )
            await self._runner.cleanup()
            self._runner = None
            self._tcp_site = None
        await self.core.close()
        self.paths.socket.unlink(missing_ok=True)
        if self._event_log is not None:
            logging.getLogger().removeHandler(self._event_log)
            self._event_log = None

    # -- DaemonControl ---------------------------------------------------------------------

    @property
    def cors(self) -> tuple[str, ...]:
        return self._http.cors

    async def apply_setting(self, key: str, new: Settings) -> bool:
        """All or nothing: check, apply what needs applying first (move the listener),
        then save; if saving fails, put the listener back and change nothing."""
        listener = key in ("port", "bind", "cors")
        moved_from = self._http if listener and self._tcp_site is not None else None
        if listener:
            self._check_bind(new.bind, insecure=new.insecure)
        elif key == "insecure" and self._tcp_site is not None:
            self._check_bind(self._http.bind, insecure=new.insecure)
        if moved_from is not None:
            await self.start_http(port=new.port, bind=new.bind, cors=new.cors)
        try:
            await asyncio.to_thread(save_setting, self.config_file, key, getattr(new, key))
        except LmsError:
            if moved_from is not None:
                await self._move_back(moved_from)
            raise
        self.settings = new
        self.core.manager.settings = new
        if key == "log_level":
            logging.getLogger().setLevel(new.log_level.upper())
        elif key == "models_dirs":
            self.core.store.set_dirs(models_dirs_for(new, self.paths.data_dir))
        elif listener and moved_from is None:
            self._http = HttpConfig(new.bind, new.port, tuple(new.cors))
        log.info(
            "setting %s = %r (%s)",
            key,
            getattr(new, key),
            "at next start" if key in RESTART_ONLY else "applied",
        )
        return key not in RESTART_ONLY

    def auth_required(self) -> bool:
        """API keys are checked on TCP when asked for, and always beyond loopback once
        keys exist (beyond loopback without keys, only `insecure` lets us listen)."""
        if self.settings.require_api_key:
            return True
        return bool(self.keys) and not is_loopback(self._http.bind)

    async def start_http(
        self, *, port: int | None, bind: str | None, cors: list[str] | None
    ) -> None:
        wanted = HttpConfig(
            bind=self._http.bind if bind is None else bind,
            port=self._http.port if port is None else port,
            cors=self._http.cors if cors is None else tuple(cors),
        )
        self._check_bind(wanted.bind, insecure=self.settings.insecure)
        same_address = (wanted.bind, wanted.port) == (self._http.bind, self._http.port)
        if self._tcp_site is not None and (same_address or wanted.port == 0):
            self._http = replace(wanted, port=self._http.port)
            return
        previous = self._http if self._tcp_site is not None else None
        await self.stop_http()
        try:
            await self._listen_tcp(wanted)
        except StartupError:
            if previous is not None:
                await self._listen_tcp(previous)
            raise
        self._remember_port()

    async def stop_http(self) -> bool:
        if self._tcp_site is None:
            return False
        await self._sdk_discovery.stop()
        await self._tcp_site.stop()
        self._tcp_site = None
        log.info("stopped the HTTP server on port %d", self._http.port)
        return True

    def status(self) -> DaemonStatus:
        http: HttpListener = {
            "running": self._tcp_site is not None,
            "bind": self._http.bind,
            "port": self._http.port,
            "cors": list(self._http.cors),
        }
        return {
            "status": "running",
            "version": __version__,
            "api_version": API_VERSION,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self._started_at, 3),
            "socket": str(self.paths.socket),
            "http": http,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _check_bind(self, bind: str, *, insecure: bool) -> None:
        if not is_loopback(bind) and not self.keys and not insecure:
            raise StartupError(
                f"refusing to listen on {bind}: beyond loopback an API key is "
                "required; create one with `lms server key create --scope admin`, then "
                "start again (or pass --insecure to serve the network without keys)"
            )

    async def _move_back(self, previous: HttpConfig) -> None:
        """Undo a move of the listener whose setting could not be saved."""
        try:
            await self.start_http(port=previous.port, bind=previous.bind, cors=list(previous.cors))
        except LmsError as exc:
            log.error(
                "could not move the HTTP listener back to %s:%d: %s",
                previous.bind,
                previous.port,
                exc,
            )

    async def _listen_tcp(self, config: HttpConfig) -> None:
        assert self._runner is not None
        site = LimitedTCPSite(
            self._runner, config.bind, config.port, max_connections=self.limits.max_connections
        )
        try:
            await site.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(
                f"cannot listen on {config.bind}:{config.port}: {reason}"
                " (is another server using the port? choose one with --port)"
            ) from exc
        server = site._server  # the bound asyncio server: learn the port when 0 was asked
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else config.port
        self._tcp_site = site
        self._http = replace(config, port=port)
        await self._sdk_discovery.start(
            self._runner,
            enabled=self.settings.sdk_discovery,
            max_connections=self.limits.max_connections,
        )
        log.info("HTTP API listening on http://%s:%d", config.bind, port)
        if "*" in config.cors:
            log.warning("CORS is enabled for any origin: any website you visit can use this server")
        if not is_loopback(config.bind):
            keys = "API keys required" if self.auth_required() else "NO API KEY (--insecure)"
            log.warning("listening beyond loopback on %s: %s", config.bind, keys)

    def _remember_port(self) -> None:
        try:
            atomic_write_text(
                self.paths.server_state_file, json.dumps({"port": self._http.port}) + "\n"
            )
        except OSError as exc:
            log.warning("cannot remember the HTTP port in %s: %s", self.paths.state_dir, exc)
