"""Shared fixtures: isolated daemon folders, free ports, and helpers that run the real
`lmsd` and `lms` as processes and always reap what they start."""

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonFolders, LmsRunner, reap_daemon


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
