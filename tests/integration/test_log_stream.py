"""`lms log stream` with the real daemon: server logs, prediction events with SmolLM2, the
text layout, Ctrl-C, TCP, and a shutdown that open streams do not hold up."""

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import DaemonFolders, LmsRunner, link_smollm2

pytestmark = [pytest.mark.integration, pytest.mark.model]

A = "smollm2-135m-instruct"


@pytest.fixture
def port(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> Iterator[int]:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env.update(
        {
            "LMS_MODELS_DIRS": str(models),
            "LMS_DEFAULT_CONTEXT_LENGTH": "256",  # bounds a rambling answer
            # Longer than `lms daemon down` waits (60 s): a shutdown that waited for the open
            # streams to end would make it fail.
            "LMS_SHUTDOWN_TIMEOUT": "600",
        }
    )
    lms("server", "start", "--port", str(free_port), check=True)
    yield free_port
    lms("daemon", "down")


class Follower:
    """`lms log stream ...` running in the background, its stdout read line by line."""

    def __init__(self, folders: DaemonFolders, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lms", "log", "stream", *args],
            env=folders.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        assert self.process.stdout is not None and self.process.stderr is not None
        self._stdout = threading.Thread(target=self._pump, daemon=True)
        self._stdout.start()
        # The CLI says so on stderr once the daemon has subscribed it.
        banner = self.process.stderr.readline()
        assert "Streaming" in banner, banner + self.process.stderr.read()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not seen in {timeout}s; got {self.stdout}") from None
            if line is None:
                raise AssertionError(f"the stream ended; got {self.stdout}")
            self.stdout.append(line)
            if wanted(line):
                return line

    def wait_for_event(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 120.0
    ) -> dict[str, Any]:
        line = self.wait_for(lambda line: wanted(json.loads(line)["data"]), timeout)
        event: dict[str, Any] = json.loads(line)
        return event

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for the exit; keep the rest of stdout and all of stderr."""
        code = self.process.wait(timeout)
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()
        self._stdout.join(5)
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                self.stdout.append(line)
        return code

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal would send it."""
        self.process.send_signal(signal.SIGINT)
        return self.finish()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._stdout.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def follow(folders: DaemonFolders) -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        follower = Follower(folders, *args)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        follower.close()


def test_server_source_shows_server_logs(
    port: int, lms: LmsRunner, follow: Callable[..., Follower]
) -> None:
    as_json = follow("--json", "--source", "server")
    as_text = follow("--source", "server")  # over TCP it needs an admin key (test_local_users)
    before = int(time.time() * 1000)
    lms("load", A, check=True)

    def loaded(data: dict[str, Any]) -> bool:
        return data["type"] == "server.log" and data["content"].startswith(f"loaded {A}")

    event = as_json.wait_for_event(loaded)
    assert event["data"]["level"] == "info"
    assert set(event) == {"timestamp", "data"}
    assert before <= event["timestamp"] <= int(time.time() * 1000), "epoch milliseconds"
    as_text.wait_for(lambda line: line.startswith(f"content: loaded {A}"))
    assert as_json.interrupt() == 0
    assert as_text.interrupt() == 0
    for follower in (as_json, as_text):
        assert "Traceback" not in follower.stderr and "Aborted" not in follower.stderr
    text = "\n".join(as_text.stdout)
    assert "type: server.log" in text and "level: info" in text and "timestamp: " in text


def test_shutdown_ends_open_streams_at_once(
    port: int, lms: LmsRunner, follow: Callable[..., Follower]
) -> None:
    followers = [follow("--json", "--source", "server"), follow("--source", "model")]
    # Held up by the open streams, the shutdown would outlast `lms daemon down`'s 60 s wait
    # (LMS_SHUTDOWN_TIMEOUT is 600 s) and the command would fail.
    down = lms("daemon", "down", check=True)
    assert "Daemon stopped" in down.stderr
    for follower in followers:
        assert follower.finish() == 0
        assert "The daemon ended the log stream." in follower.stderr


def test_bad_arguments(lms: LmsRunner) -> None:
    bad_source = lms("log", "stream", "--source", "runtime")
    assert bad_source.returncode == 2 and "runtime" in bad_source.stderr
    bad_filter = lms("log", "stream", "--filter", "inputs")
    assert bad_filter.returncode == 2 and "input,output" in bad_filter.stderr


def test_no_daemon(lms: LmsRunner) -> None:
    result = lms("log", "stream")
    assert result.returncode == 3 and "not running" in result.stderr


def test_model_source_shows_prediction_input_and_output(
    port: int, lms: LmsRunner, follow: Callable[..., Follower]
) -> None:
    as_json = follow("--json", "--source", "model")
    outputs_only = follow("--source", "model", "--filter", "output", "--stats")
    piped, question = "My name is Ada.", "What is my name?"
    answer = lms("chat", A, "-p", question, input=piped, check=True).stdout

    def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda data: data["type"] == kind

    # Both events are published before the answer's stream ends: no long waits.
    given = as_json.wait_for_event(is_type("llm.prediction.input"), timeout=15)["data"]
    assert given["modelIdentifier"] == A
    assert given["modelPath"].endswith(".gguf")
    assert given["input"].index(piped) < given["input"].index(question)
    said = as_json.wait_for_event(is_type("llm.prediction.output"), timeout=15)["data"]
    assert said["modelIdentifier"] == A
    assert said["output"].strip() == answer.strip()

    outputs_only.wait_for(lambda line: line == "type: llm.prediction.output", 15)
    outputs_only.wait_for(lambda line: line.startswith("stats:"), 15)
    assert outputs_only.interrupt() == 0
    assert not any(line == "type: llm.prediction.input" for line in outputs_only.stdout)
    assert any(line.startswith("output: ") for line in outputs_only.stdout)
    assert as_json.interrupt() == 0
