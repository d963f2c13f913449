import os
from pathlib import Path

from lms import service
from lms.paths import resolve_paths


def test_lms_home_puts_every_folder_under_it(tmp_path: Path) -> None:
    paths = resolve_paths({"LMS_HOME": str(tmp_path)})
    assert paths.config_file == tmp_path / "config" / "config.yaml"
    assert paths.socket == tmp_path / "run" / "lmsd.sock"
    assert paths.state_dir == tmp_path / "state"
    assert paths.log_dir == tmp_path / "log"
    assert paths.data_dir == tmp_path / "data"


def test_single_folder_overrides_win_over_home(tmp_path: Path) -> None:
    paths = resolve_paths({"LMS_HOME": str(tmp_path), "LMS_RUNTIME_DIR": "/x/run"})
    assert paths.socket == Path("/x/run/lmsd.sock")
    assert paths.config_dir == tmp_path / "config"


def test_defaults_are_per_user_platform_folders() -> None:
    paths = resolve_paths({})
    assert "lmsd" in str(paths.config_dir)
    assert "lmsd" in str(paths.runtime_dir)


def test_tests_run_isolated_from_the_real_install(isolated_env: Path) -> None:
    # tests/conftest.py: every folder a test could write to lies in its own temp dir.
    paths = resolve_paths()
    for folder in (paths.config_dir, paths.state_dir, paths.log_dir, paths.data_dir):
        assert folder.is_relative_to(isolated_env)
    assert paths.socket.is_relative_to(isolated_env)
    assert Path.home().is_relative_to(isolated_env)
    assert len(os.fsencode(paths.socket)) < 100, "short enough for a Unix socket"
    planned = service.plan(system=False)
    assert planned.staged and planned.target.is_relative_to(isolated_env)
    assert {name for name in os.environ if name.startswith("LMS_")} == {
        "LMS_HOME",
        "LMS_SERVICE_ROOT",
    }
