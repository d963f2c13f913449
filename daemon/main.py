"""`lmsd`: the composition root. Builds settings, logging and the server, serves until
SIGTERM/SIGINT (or `lms daemon down`), then shuts down in bounded phases."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon.config import Settings, load_settings
from daemon.errors import ConfigError, StartupError
from daemon.lock import InstanceLock, ensure_writable_dir, prepare_private_dir
from daemon.logs import setup_logging
from daemon.notify import ServiceNotifier
from daemon.server import Daemon
from lms.api.version import __version__
from lms.paths import Paths, resolve_paths

log = logging.getLogger("lmsd")

EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_ERROR = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lmsd", description="The lmsd daemon, in the foreground (Ctrl-C stops it)."
    )
    parser.add_argument("--port", type=int, help="TCP port of the HTTP API (default 1234)")
    parser.add_argument("--bind", help="address the HTTP API binds to (default 127.0.0.1)")
    parser.add_argument(
        "--cors",
        nargs="?",
        const="*",
        metavar="ORIGINS",
        help="allow these comma-separated browser origins (alone: any origin)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow binding beyond loopback without API keys",
    )
    parser.add_argument(
        "--no-http",
        dest="http",
        action="store_false",
        default=None,
        help="serve only the Unix socket until `lms server start`",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--engine",
        choices=["auto", "fake"],
        help="engine for every load (fake: the deterministic test engine, in process)",
    )
    parser.add_argument("--config", type=Path, help="config file (default: in the config dir)")
    parser.add_argument(
        "--detached", action="store_true", help="log to the rotating file in the log dir"
    )
    parser.add_argument("--version", action="version", version=f"lmsd {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    paths = resolve_paths()
    try:
        settings = load_settings(
            config_file=args.config or paths.config_file,
            server_state_file=paths.server_state_file,
            flags={
                "port": args.port,
                "bind": args.bind,
                "cors": args.cors,
                "insecure": args.insecure,
                "http": args.http,
                "log_level": args.log_level,
                "engine": args.engine,
            },
        )
    except ConfigError as exc:
        print(f"lmsd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        prepare_private_dir(paths.runtime_dir)
        ensure_writable_dir(paths.state_dir, "state")
        if args.detached:
            ensure_writable_dir(paths.log_dir, "log")
        setup_logging(settings.log_level, log_file=paths.log_file if args.detached else None)
        return asyncio.run(serve(settings, paths, args.config or paths.config_file))
    except StartupError as exc:
        print(f"lmsd: error: {exc}", file=sys.stderr)
        if args.detached:
            log.error("%s", exc)
        return EXIT_STARTUP_ERROR


async def serve(settings: Settings, paths: Paths, config_file: Path) -> int:
    lock = InstanceLock(paths.lock_file)
    lock.acquire()
    daemon = Daemon(settings, paths, config_file)
    notifier = ServiceNotifier()
    try:
        install_signal_handlers(daemon)
        await daemon.start()
        log.info("lmsd %s ready (pid %d)", __version__, os.getpid())
        notifier.ready(f"serving on {paths.socket}")
        await daemon.wait_for_shutdown_request()
    finally:
        await notifier.stopping()
        await daemon.close()
        lock.release()
    log.info("lmsd stopped")
    return 0


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        received.append(signum)
        log.info("%s received: shutting down gracefully", signal.Signals(signum).name)
        daemon.request_shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


if __name__ == "__main__":
    raise SystemExit(main())
