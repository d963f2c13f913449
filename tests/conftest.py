"""Shared fixtures: every test isolated from the real install, isolated daemon folders,
free ports, and helpers that run the real `lmsd` and `lms` as processes and always reap
what they start."""

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonFolders, LmsRunner, reap_daemon


def _isolate(mp: pytest.MonkeyPatch, prefix: str) -> Path:
    """Points every folder the CLI, the daemon or a service manager could use into a fresh
    temp dir and drops every `LMS_*` setting of the developer's shell. Short paths under
    /tmp: a Unix socket path must stay under ~100 bytes."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    for name in list(os.environ):
        if name.startswith("LMS_"):
            mp.delenv(name)
    home = root / "home"
    runtime = root / "xdg-run"
    runtime.mkdir(mode=0o700)
    folders = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_RUNTIME_DIR": runtime,
        "LMS_HOME": root / "lms",
        # `lms daemon install` writes under this staging root and runs no systemctl or
        # launchctl (lms/service.py); DaemonFolders.env passes it on to the CLI it runs.
        "LMS_SERVICE_ROOT": root / "service-root",
    }
    for name, path in folders.items():
        mp.setenv(name, str(path))
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env() -> Iterator[None]:
    """The same isolation for session- and module-scoped fixtures (a shared daemon), which
    are set up before any function-scoped fixture."""
    with pytest.MonkeyPatch.context() as mp:
        root = _isolate(mp, "lms-s-")
        yield
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own HOME, XDG folders, LMS_HOME and service staging root, so no
    test touches a real config, socket, models folder or systemd/launchd unit."""
    root = _isolate(monkeypatch, "lms-e-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def folders() -> Iterator[DaemonFolders]:
    # Short paths under /tmp: a Unix socket path must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="lms-t-"))
    folders = DaemonFolders(root)
    try:
        yield folders
    finally:
        reap_daemon(folders)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lms(folders: DaemonFolders) -> LmsRunner:
    return LmsRunner(folders)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
