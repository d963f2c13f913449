"""The real daemon and the real CLI, as processes: start, answer, stop, recover."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.inprocess import write_models
from tests.support import (
    DaemonFolders,
    DaemonProcess,
    LmsRunner,
    SseStream,
    http_get,
    wait_for_exit,
)

pytestmark = pytest.mark.integration

EXIT_DAEMON_NOT_RUNNING = 3


def test_server_start_status_and_daemon_down(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    result = lms("server", "start", "--port", str(free_port), check=True)
    assert f"Success! Server is now running on port {free_port}" in result.stderr

    assert http_get(f"http://127.0.0.1:{free_port}/lmstudio-greeting") == (200, {"lmstudio": True})
    assert http_get(f"http://127.0.0.1:{free_port}/health") == (200, {"status": "ok"})
    assert lms.json("server", "status") == {"running": True, "port": free_port}
    daemon = lms.json("daemon", "status")
    assert daemon["status"] == "running"
    pid = daemon["pid"]
    assert pid == folders.daemon_pid()
    assert isinstance(daemon["version"], str)

    # The socket is private: 0600 inside a 0700 folder.
    assert folders.socket.stat().st_mode & 0o777 == 0o600
    assert folders.runtime_dir.stat().st_mode & 0o777 == 0o700

    # The daemon is detached: its own session, not a child of the CLI.
    assert os.getsid(pid) == pid

    result = lms("daemon", "down", check=True)
    assert f"Daemon stopped (PID: {pid})" in result.stderr
    assert wait_for_exit(pid)
    assert not folders.socket.exists()
    assert lms.json("daemon", "status") == {"status": "not-running"}
    assert lms.json("server", "status") == {"running": False}


def test_commands_without_a_daemon_say_so_in_one_line(lms: LmsRunner) -> None:
    result = lms("daemon", "down")
    assert result.returncode == EXIT_DAEMON_NOT_RUNNING
    assert result.stderr.strip() == "The daemon is not running."
    result = lms("server", "stop")
    assert result.returncode == 1
    assert result.stderr.strip() == "The server is not running."
    for args in (("status",), ("version",)):
        result = lms(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_second_daemon_refuses_to_start(folders: DaemonFolders, free_port: int) -> None:
    with DaemonProcess(folders, "--port", str(free_port)) as first:
        pid = first.wait_ready()["pid"]
        second = subprocess.run(
            [sys.executable, "-m", "daemon", "--port", "0"],
            env=folders.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"lmsd: error: lmsd is already running (pid {pid}); "
            "stop it with `lms daemon down` first"
        )
        # The first one is unharmed.
        assert http_get(f"http://127.0.0.1:{free_port}/health")[0] == 200
        assert first.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_daemon_cleanly(folders: DaemonFolders, free_port: int, sig: int) -> None:
    with DaemonProcess(folders, "--port", str(free_port)) as daemon:
        daemon.wait_ready()
        assert daemon.stop(sig) == 0
        assert not folders.socket.exists()


def test_in_flight_request_finishes_during_shutdown(folders: DaemonFolders, free_port: int) -> None:
    models = folders.root / "models"
    write_models(models)
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    folders.extra_env["LMS_FAKE_TOKEN_DELAY"] = "0.05"  # 40 tokens: about two seconds
    with DaemonProcess(folders, "--engine", "fake", "--port", str(free_port)) as daemon:
        daemon.wait_ready()
        body = {
            "model": "endless",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 40,
        }
        with SseStream(f"http://127.0.0.1:{free_port}", "/v1/chat/completions", body) as stream:
            events = stream.events()
            first = next(events)
            assert first["choices"][0]["delta"], first
            # The generation is in flight when SIGTERM arrives: it runs to its end.
            daemon.process.send_signal(signal.SIGTERM)
            rest = list(events)
        assert rest[-1] == "[DONE]"
        finish = [e["choices"][0]["finish_reason"] for e in rest[:-1] if e["choices"]]
        assert finish[-1] == "length"
        assert daemon.process.wait(15) == 0


def test_restart_after_kill_9(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> None:
    lms("server", "start", "--port", str(free_port), check=True)
    pid = folders.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for_exit(pid)
    assert folders.socket.exists(), "kill -9 leaves a stale socket behind"

    assert lms("daemon", "status", "--json", check=True).stdout.strip().startswith("{")
    assert lms.json("daemon", "status") == {"status": "not-running"}
    lms("server", "start", "--port", str(free_port), check=True)
    new_pid = folders.daemon_pid()
    assert new_pid not in (None, pid)
    assert http_get(f"http://127.0.0.1:{free_port}/lmstudio-greeting")[0] == 200
    lms("daemon", "down", check=True)


def test_server_start_moves_the_listener_and_the_port_is_remembered(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        second_port = probe.getsockname()[1]
    lms("server", "start", "--port", str(free_port), check=True)
    result = lms("server", "start", "--port", str(second_port), check=True)
    assert f"running on port {second_port}" in result.stderr
    assert http_get(f"http://127.0.0.1:{second_port}/health")[0] == 200
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{free_port}/health", timeout=1)

    result = lms("server", "stop", check=True)
    assert f"Stopped the server on port {second_port}." in result.stderr
    assert lms.json("server", "status") == {"running": False}
    assert lms.json("daemon", "status")["status"] == "running"

    lms("daemon", "down", check=True)
    result = lms("server", "start", check=True)
    assert f"running on port {second_port}" in result.stderr
    remembered = json.loads((folders.root / "state" / "http-server.json").read_text())
    assert remembered == {"port": second_port}
    lms("daemon", "down", check=True)


def test_typo_in_config_is_one_clear_line(folders: DaemonFolders, lms: LmsRunner) -> None:
    folders.write_config("prot: 1234\n")
    result = subprocess.run(
        [sys.executable, "-m", "daemon"],
        env=folders.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(folders.config_file) in lines[0] and "'prot'" in lines[0]

    # Through the CLI, the same reason reaches the user.
    result = lms("server", "start")
    assert result.returncode == 1
    assert "'prot'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_type_in_config(folders: DaemonFolders) -> None:
    folders.write_config("port: twelve\n")
    result = subprocess.run(
        [sys.executable, "-m", "daemon"],
        env=folders.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "'port' must be an integer" in result.stderr
    assert str(folders.config_file) in result.stderr


def test_port_in_use_is_one_clear_line(folders: DaemonFolders, lms: LmsRunner) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lms("server", "start", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr


def test_unwritable_folder_is_one_clear_line(folders: DaemonFolders, tmp_path: object) -> None:
    blocker = folders.root / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    folders.extra_env["LMS_RUNTIME_DIR"] = str(blocker / "run")
    result = subprocess.run(
        [sys.executable, "-m", "daemon"],
        env=folders.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot use runtime folder" in lines[0] and str(blocker) in lines[0]
