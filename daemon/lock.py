"""One daemon per user: a private runtime folder and an exclusive lock inside it.

The kernel drops a flock when its holder dies (kill -9 included), so holding the lock
proves every other daemon is gone and any socket file left in the folder is stale.
"""

import errno
import fcntl
import os
from pathlib import Path

from daemon.errors import AlreadyRunning, StartupError


def prepare_private_dir(path: Path) -> None:
    """Create `path` as 0700 and owned by us, or explain why it cannot be used."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid != os.getuid():
            raise StartupError(f"{path} belongs to another user; set LMS_RUNTIME_DIR elsewhere")
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise StartupError(f"cannot use runtime folder {path}: {exc.strerror}") from exc


def ensure_writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create {what} folder {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"cannot write to {what} folder {path}: Permission denied")


class InstanceLock:
    """Holds the per-user lock for the daemon's lifetime; records our pid in the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(read_lock_pid(self.path)) from None
            raise StartupError(f"cannot lock {self.path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
