import os
from pathlib import Path

import pytest

from daemon.errors import AlreadyRunning, StartupError
from daemon.lock import InstanceLock, prepare_private_dir


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path / "lmsd.lock")
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning) as info:
            InstanceLock(tmp_path / "lmsd.lock").acquire()
        assert info.value.pid == os.getpid()
    finally:
        first.release()
    again = InstanceLock(tmp_path / "lmsd.lock")
    again.acquire()
    again.release()


def test_private_dir_is_made_0700(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    prepare_private_dir(folder)
    assert folder.stat().st_mode & 0o777 == 0o700


def test_unusable_dir_is_a_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError, match="cannot use runtime folder"):
        prepare_private_dir(blocker / "run")
