"""`lms chat` with the real daemon and SmolLM2: one-shot, piped stdin, stats, errors, and
the interactive mode driven through a pseudo-terminal."""

import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonFolders, LmsRunner, link_smollm2, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.model]

A = "smollm2-135m-instruct"
PROMPT_TOKENS = re.compile(rb"Prompt tokens: (\d+)")
# Questions with short answers keep the tiny model from rambling (the tests run faster).
FRANCE = "What is the capital of France?"
LONG_SYSTEM_PROMPT = (
    "You are a careful assistant for a small museum of old clocks. You answer questions "
    "about the opening hours, the tickets, the history of each clock, the workshop where "
    "they are repaired and the people who built them, always politely and in short, plain "
    "sentences that a child could read without help."
)


@pytest.fixture
def context() -> str:
    """The context length: short, as the tiny model can ramble on to its end (slow on a
    busy machine); conversations with a history ask for more."""
    return "256"


@pytest.fixture
def server(folders: DaemonFolders, lms: LmsRunner, free_port: int, context: str) -> Iterator[str]:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env.update(
        {"LMS_MODELS_DIRS": str(models), "LMS_DEFAULT_CONTEXT_LENGTH": context}
    )
    lms("server", "start", "--port", str(free_port), check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def prompt_tokens(stderr: str | bytes) -> int:
    raw = stderr.encode() if isinstance(stderr, str) else stderr
    found = PROMPT_TOKENS.findall(raw)
    assert found, f"no stats in {raw!r}"
    return int(found[-1])


def test_one_shot_prints_the_answer_and_stats(server: str, lms: LmsRunner) -> None:
    result = lms("chat", A, "-p", FRANCE, "--stats", check=True)
    assert result.stdout.strip(), "an answer on stdout"
    assert "Prediction stats" not in result.stdout, "stats go to stderr"
    assert "Prediction stats:" in result.stderr
    for line in ("Stop reason: ", "Tokens/second: ", "Time to first token: ", "Total tokens: "):
        assert line in result.stderr
    assert prompt_tokens(result.stderr) > 5
    (instance,) = lms.json("ps")
    assert instance["identifier"] == A and instance["ttlMs"] == 3600 * 1000, "--ttl 3600"

    plain = lms("chat", "-p", "What is 2 + 2?", check=True)  # no model: the only loaded one
    assert plain.stdout.strip() and "Prediction stats" not in plain.stderr


def test_piped_stdin_comes_before_the_prompt(server: str, lms: LmsRunner) -> None:
    question = "What did the keeper count? Answer in one word."
    alone = lms("chat", A, "-p", question, "--stats", "--ttl", "120", check=True)
    text = "The lighthouse keeper counted the ships every night. " * 8
    piped = lms("chat", A, "-p", question, "--stats", input=text, check=True)
    assert piped.stdout.strip()
    # The piped text (about 80 tokens) reached the model along with the prompt.
    assert prompt_tokens(piped.stderr) >= prompt_tokens(alone.stderr) + 60
    assert lms.json("ps")[0]["ttlMs"] == 120 * 1000, "--ttl is sent"

    only_stdin = lms("chat", A, input=FRANCE + "\n", check=True)  # no -p, not a terminal
    assert only_stdin.stdout.strip()


def test_errors_are_one_line_and_fail(server: str, lms: LmsRunner) -> None:
    none_loaded = lms("chat", "-p", "hi")
    assert none_loaded.returncode == 1
    assert "no model is loaded" in none_loaded.stderr
    assert "lms load" in none_loaded.stderr and not none_loaded.stdout
    assert "Traceback" not in none_loaded.stderr

    unknown = lms("chat", "no-such-model", "-p", "hi")
    assert unknown.returncode == 1 and not unknown.stdout
    assert unknown.stderr.startswith("Error: ") and "not found" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1

    nothing = lms("chat", A)  # stdin is /dev/null: no prompt anywhere
    assert nothing.returncode == 1 and "nothing to ask" in nothing.stderr


def test_daemon_down_is_reported(lms: LmsRunner) -> None:
    result = lms("chat", A, "-p", "hi")
    assert result.returncode == 3 and "not running" in result.stderr


# -- interactive, through a pseudo-terminal ------------------------------------------------------


class Terminal:
    """`lms chat` on a pseudo-terminal: what a user at a keyboard would see and type."""

    def __init__(self, folders: DaemonFolders, *args: str) -> None:
        env = {**folders.env, "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "lms", "chat", *args]
        pid, fd = pty.fork()
        if pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                os.chdir(Path(__file__).resolve().parents[2])
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = b""  # everything read so far
        self.mark = 0  # where the next expect() starts looking
        self.status: int | None = None

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            raise EOFError(f"the terminal closed; it showed:\n{self.seen.decode(errors='replace')}")
        self.seen += chunk
        return True

    def expect(self, pattern: bytes, timeout: float = 60.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.seen, self.mark)
            if found:
                self.mark = found.end()
                return found
            if not self._read(deadline):
                shown = self.seen[self.mark :].decode(errors="replace")
                raise AssertionError(f"{pattern!r} did not show up; after the mark:\n{shown}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def ask(self, line: str) -> int:
        """Type a line, wait for the answer's stats and the next prompt: prompt tokens."""
        self.send(line + "\r")
        found = self.expect(rb"Prompt tokens: (\d+)", timeout=180)
        self.expect(rb"> ")
        return int(found.group(1))

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._read(min(deadline, time.monotonic() + 0.1))
            except EOFError:
                time.sleep(0.02)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"lms chat did not exit; it showed:\n{self.seen.decode()}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def terminals(folders: DaemonFolders) -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.close()


@pytest.mark.parametrize("context", ["1024"])
def test_interactive_commands(
    server: str, folders: DaemonFolders, terminals: list[Terminal]
) -> None:
    term = Terminal(folders, A, "--stats")
    terminals.append(term)
    term.expect(rb"Chatting with smollm2-135m-instruct")
    term.expect(rb"> ")
    term.send("/help\r")
    term.expect(rb"/system <text>")
    term.expect(rb"> ")

    first = term.ask(FRANCE)
    second = term.ask("And of Italy?")
    assert second > first + 3, "the history goes with the second question"
    term.send("/clear\r")
    term.expect(rb"Conversation cleared\.")
    term.expect(rb"> ")
    assert term.ask(FRANCE) == first, "/clear forgot the history"

    term.send("/system " + LONG_SYSTEM_PROMPT + "\r")
    term.expect(rb"System prompt set\.")
    term.send("/system\r")
    term.expect(rb"System prompt: You are a careful assistant")
    term.send("/clear\r")  # forgets the history, keeps the system prompt
    term.expect(rb"Conversation cleared\.")
    term.expect(rb"> ")
    with_system = term.ask(FRANCE)
    assert with_system > first + 30, "the system prompt goes with the question"

    term.send("/stats\r")
    # Up to the last line: the terminal may hand the block over in pieces.
    stats = term.expect(rb"Prediction stats:\r?\n(  .*\r?\n)*  Total tokens: \d+")
    assert b"Stop reason: " in stats.group(0)
    assert f"Prompt tokens: {with_system}".encode() in stats.group(0)
    term.send("/nonsense\r")
    term.expect(rb"Unknown command /nonsense")
    term.send("/exit\r")
    assert term.wait() == 0


@pytest.mark.parametrize("context", ["1024"])
def test_ctrl_c_stops_an_answer_then_leaves(
    server: str, folders: DaemonFolders, lms: LmsRunner, terminals: list[Terminal]
) -> None:
    term = Terminal(folders, A)
    terminals.append(term)
    term.expect(rb"> ")
    term.send("/stats\r")
    term.expect(rb"No answer yet\.")
    term.expect(rb"> ")
    term.send("Write a very long story about a dragon who learns to bake bread.\r")
    term.expect(rb"bread\.\r?\n")  # the echo of the line
    term.expect(rb"\w{3}")  # the answer has begun
    term.send("\x03")
    term.expect(rb"\(interrupted\)")
    term.expect(rb"> ")

    def idle() -> bool:
        instances = lms.json("ps")
        return bool(instances) and instances[0]["status"] == "idle"

    assert wait_until(idle, timeout=10), "closing the connection stopped the generation"
    term.send("/stats\r")  # the partial answer is remembered
    term.expect(rb"(Prediction stats:|No stats for that answer\.)")
    term.expect(rb"> ")
    term.send("\x03")  # at the prompt: leave
    assert term.wait() == 0


def test_ctrl_d_leaves(server: str, folders: DaemonFolders, terminals: list[Terminal]) -> None:
    term = Terminal(folders, A)
    terminals.append(term)
    term.expect(rb"> ")
    term.send("\x04")
    assert term.wait() == 0
