"""Logging: stderr in the foreground, a size-rotated file when detached."""

import logging
import logging.handlers
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MAX_LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a malformed request (a bad request line, a header too long, ...) at
    error level with a traceback, as if the server had failed. It is the client's error:
    one warning line naming it. aiohttp's own 4xx errors carry their status as `code`
    (aiohttp is not imported here: only daemon.http and daemon.server may)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "code", None)
        if (
            record.levelno > logging.WARNING
            and exc is not None
            and type(exc).__module__.startswith("aiohttp")
            and isinstance(code, int)
            and 400 <= code < 500
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            summary = " ".join(str(exc).split())  # aiohttp's messages span lines
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {summary}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


CLIENT_ERROR_FILTER = ClientErrorFilter()


def setup_logging(level: str, *, log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    server_log = logging.getLogger("aiohttp.server")
    if CLIENT_ERROR_FILTER not in server_log.filters:
        server_log.addFilter(CLIENT_ERROR_FILTER)
    # One line per request is useful at debug level, noise at info.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
