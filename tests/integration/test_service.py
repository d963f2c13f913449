"""Running at boot: the unit files and plist `lms daemon install` writes (into a staging
root, no real service manager), and the sd_notify readiness/watchdog protocol against a
real datagram socket."""

import os
import plistlib
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from daemon.notify import ServiceNotifier
from lms import service
from tests.support import DaemonFolders, DaemonProcess, LmsRunner

pytestmark = pytest.mark.integration

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian package `systemd`; .ci/run installs it)",
)


def verify_unit(path: Path, *, user: bool, tmp_path: Path) -> None:
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(["--user"] if user else []), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze warned: {result.stderr}"


@needs_systemd_analyze
@pytest.mark.parametrize("system", [False, True])
def test_install_writes_a_valid_unit_with_the_right_path(
    folders: DaemonFolders, lms: LmsRunner, tmp_path: Path, system: bool
) -> None:
    root = tmp_path / "root"
    home = tmp_path / "home"
    folders.extra_env.update(
        {"LMS_SERVICE_ROOT": str(root), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    )
    args = ["daemon", "install", "--no-start", *(["--system"] if system else [])]
    result = lms(*args, check=True)
    assert "no service manager was touched" in result.stderr
    if system:
        unit = root / "etc" / "systemd" / "system" / "lmsd.service"
    else:
        unit = root / str(home / ".config" / "systemd" / "user" / "lmsd.service").lstrip("/")
    assert unit.exists(), result.stderr
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    lmsd = Path(exec_start.removeprefix("ExecStart="))
    assert lmsd.is_absolute() and lmsd.name == "lmsd" and os.access(lmsd, os.X_OK)
    assert lmsd.parent == Path(service.sys.executable).parent, "the venv lms runs from"
    assert "Type=notify" in text and "Restart=on-failure" in text
    assert "@LMSD@" not in text
    verify_unit(unit, user=not system, tmp_path=tmp_path)

    result = lms("daemon", "uninstall", *(["--system"] if system else []), check=True)
    assert "Service removed." in result.stderr and not unit.exists()


def test_launch_agent_plist_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMS_SERVICE_ROOT", str(tmp_path))
    monkeypatch.setenv("LMS_HOME", str(tmp_path / "lmshome"))
    planned = service.plan(system=False, platform="darwin")
    assert planned.manager == "launchd"
    assert planned.target.name == "ai.lmsd.daemon.plist"
    assert "LaunchAgents" in planned.target.parts
    agent = plistlib.loads(planned.content.encode())
    assert agent["Label"] == "ai.lmsd.daemon"
    assert agent["ProgramArguments"] == [service.lmsd_command()]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"] == str(tmp_path / "lmshome" / "log" / "lmsd.err.log")
    service.install(planned, start=False)
    assert plistlib.loads(planned.target.read_bytes())["Label"] == "ai.lmsd.daemon"


def test_repository_service_files_are_the_packaged_templates() -> None:
    repo = Path(__file__).resolve().parents[2]
    for link, name in (
        ("systemd/lmsd.service", "lmsd.service"),
        ("systemd/lmsd-system.service", "lmsd-system.service"),
        ("launchd/ai.lmsd.daemon.plist", "ai.lmsd.daemon.plist"),
    ):
        assert (repo / link).read_text() == (repo / "lms" / "service_templates" / name).read_text()


def test_readiness_and_watchdog_over_notify_socket(folders: DaemonFolders, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(20)
        folders.extra_env.update({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        with DaemonProcess(folders, "--no-http") as daemon:
            first = listener.recv(4096).decode()
            assert "READY=1" in first and f"MAINPID={daemon.process.pid}" in first
            assert folders.socket.exists(), "ready only once the socket listens"
            # Pings keep coming while it runs (how often: the test below).
            for _ in range(3):
                assert listener.recv(4096).decode() == "WATCHDOG=1"
            daemon.process.send_signal(signal.SIGTERM)
            messages = []
            while "STOPPING=1" not in messages:
                messages.append(listener.recv(4096).decode())
            assert daemon.process.wait(15) == 0


def test_watchdog_pings_at_half_the_watchdog_interval() -> None:
    notifier = ServiceNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_seconds == 0.1
    meant_for_another = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert ServiceNotifier(meant_for_another).watchdog_seconds is None
    assert ServiceNotifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert ServiceNotifier({"WATCHDOG_USEC": "soon"}).watchdog_seconds is None
