"""Issue 12, item 6, through the real daemon and CLI: when the config and state folders
cannot be written (here: made immutable, which stops root too), `lms server config set`
and `lms server key create/revoke` say why and change nothing, in memory or on disk; a
refused `config set bind` is not saved, so the next start still works."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import DaemonFolders, LmsRunner

pytestmark = pytest.mark.integration


@contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """The folder cannot be written, even by root (`chattr +i`); skips where the file
    system or the container does not allow it."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run([chattr, "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a folder immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_unwritable_folders_change_nothing(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    folders.write_config("jit_ttl: 100.0\n")
    lms("server", "start", "--port", str(free_port), check=True)
    before = folders.config_file.read_text()
    # Without a key, binding beyond loopback is refused, and the refusal is not saved.
    refused = lms("server", "config", "set", "bind", "0.0.0.0")
    assert refused.returncode == 1 and "API key" in refused.stderr
    assert folders.config_file.read_text() == before
    # A value the daemon refuses is bad usage (exit 2), and is not saved either.
    for key in ("jit_ttl", "shutdown_timeout"):
        nan = lms("server", "config", "set", key, "nan")
        assert nan.returncode == 2 and key in nan.stderr, nan.stderr
    assert folders.config_file.read_text() == before
    kept = lms("server", "key", "create", "--name", "kept", check=True).stdout.strip()

    with immutable(folders.config_file.parent):
        result = lms("server", "config", "set", "jit_ttl", "60")
        assert result.returncode == 1
        assert str(folders.config_file) in result.stderr
        assert "Internal server error" not in result.stderr
    assert lms.json("server", "config", "get", "jit_ttl") == 100.0
    assert folders.config_file.read_text() == before

    state = folders.root / "state"
    with immutable(state):
        created = lms("server", "key", "create", "--name", "lost")
        assert created.returncode == 1 and "api-keys.json" in created.stderr
        revoked = lms("server", "key", "revoke", "kept")
        assert revoked.returncode == 1 and "api-keys.json" in revoked.stderr
    names = [k["name"] for k in lms.json("server", "key", "list")]
    assert names == ["kept"]

    # Nothing refused was saved: the daemon starts again as before.
    lms("daemon", "down", check=True)
    lms("server", "start", "--port", str(free_port), check=True)
    # The key that could not be revoked works after the restart, as `lms` said it would.
    assert [k["name"] for k in lms.json("server", "key", "list")] == ["kept"]
    assert kept.startswith("lms-")
    lms("daemon", "down", check=True)
