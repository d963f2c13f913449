"""`lms --help` and `lms ps` stay light: the CLI is a thin client that imports heavy
modules lazily, only in the commands that need them (docs ARCHITECTURE: "`lms` starts
fast"). Checked in a fresh interpreter with `-X importtime`, which lists every module
a run imports."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("aiohttp", "daemon", "llama_cpp", "psutil", "yaml", "numpy", "mlx", "mlx_lm")


def run_lms(*args: str, home: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lms", *args],
        env={**os.environ, "LMS_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "typer" in modules, "-X importtime listed the imports"
    return result, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY)


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    result, modules = run_lms("--help", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert heavy(modules) == []


@pytest.mark.parametrize("args", [("ps",), ("ps", "--json")])
def test_ps_without_a_daemon_imports_nothing_heavy(tmp_path: Path, args: tuple[str, ...]) -> None:
    result, modules = run_lms(*args, home=tmp_path)
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 3, messages
    assert any("the daemon is not running" in line for line in messages), messages
    assert heavy(modules) == []
