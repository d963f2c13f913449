"""Backpressure: requests beyond an instance's slots wait in a bounded queue; past it,
503 with Retry-After at once; a queued request whose client left is dropped."""

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonFolders, LmsRunner, SseStream, link_smollm2, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story"}],
    "max_tokens": 3000,
    "logit_bias": {"2": -100},
}


@pytest.fixture
def server(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> Iterator[str]:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env.update(
        {"LMS_MODELS_DIRS": str(models), "LMS_MAX_QUEUE": "1", "LMS_DEFAULT_CONTEXT_LENGTH": "4096"}
    )
    lms("server", "start", "--port", str(free_port), check=True)
    lms("load", MODEL, "--parallel", "1", check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def first_event(stream: SseStream) -> None:
    assert stream.status == 200
    next(stream.events())


def test_queue_limit_gives_503_with_retry_after(
    server: str, lms: LmsRunner, tmp_path: Path
) -> None:
    running = SseStream(server, "/v1/chat/completions", LONG)
    first_event(running)
    queued = SseStream(server, "/v1/chat/completions", LONG)  # waits: the only slot is busy
    try:
        assert wait_until(lambda: lms.json("ps")[0]["inFlight"] == 2, timeout=60)
        instance = lms.json("ps")[0]
        assert instance["queued"] == 1 and instance["parallel"] == 1

        request = urllib.request.Request(
            f"{server}/v1/chat/completions",
            data=b'{"model": "%s", "messages": '
            b'[{"role": "user", "content": "hi"}]}' % MODEL.encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=60)
        assert info.value.code == 503
        assert info.value.headers["Retry-After"] == "1"
        error = json.loads(info.value.read())["error"]
        assert error["code"] == "server_busy" and "busy" in error["message"]
        # Refused at once, not after waiting for a place: the two requests that filled the
        # slot and the queue are both still there.
        assert lms.json("ps")[0]["inFlight"] == 2, "refused while the others still run"

        queued.close()  # the waiting client leaves: its place is freed
        assert wait_until(lambda: lms.json("ps")[0]["inFlight"] == 1, timeout=60)
        again = SseStream(server, "/v1/chat/completions", LONG)  # accepted into the queue
        assert wait_until(lambda: lms.json("ps")[0]["inFlight"] == 2, timeout=60)
        again.close()
    finally:
        queued.close()
        running.close()
    assert wait_until(lambda: lms.json("ps")[0]["inFlight"] == 0, timeout=60)
