"""Images through the real daemon: SmolLM2 with the test projector (tests/fixtures/vision.py,
random weights: only the plumbing is checked, never what the model says), over every API
surface, beside text requests, with the prompt cache, and each error."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fixtures import vision
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import link_smollm2, post_json

pytestmark = [pytest.mark.integration, pytest.mark.model]

VLM = vision.VLM_KEY
TEXT_MODEL = "smollm2-135m-instruct"
MAX_IMAGE_BYTES = 150_000
QUESTION = "What is in this picture?"


def _populate(models: Path, _root: Path) -> None:
    link_smollm2(models)  # skips the module without the SmolLM2 package
    assert vision.link_vision_model(models) is not None


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    env = {
        "LMS_DEFAULT_CONTEXT_LENGTH": "1024",
        "LMS_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "LMS_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    }
    with running_daemon("lms-vis-", _populate, env) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="not-needed", max_retries=0)


def data_url(seed: int, fmt: str = "PNG") -> str:
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}[fmt]
    encoded = base64.b64encode(vision.png_bytes(seed, fmt=fmt)).decode()
    return f"data:image/{mime};base64,{encoded}"


def image_message(*urls: str, text: str = QUESTION) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def chat(client: openai.OpenAI, messages: list[Any], model: str = VLM, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, **kw
    )


def test_listed_as_vision(daemon: RunningDaemon) -> None:
    with urllib.request.urlopen(f"{daemon.url}/api/v0/models", timeout=10) as response:
        models = {m["id"]: m for m in json.loads(response.read())["data"]}
    assert models[VLM]["type"] == "vlm"
    assert models[TEXT_MODEL]["type"] == "llm"
    listed = {m["modelKey"]: m for m in daemon.lms.json("ls")}
    assert listed[VLM]["vision"] is True and listed[TEXT_MODEL]["vision"] is False
    table = daemon.lms("ls", check=True).stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert rows[VLM].split()[-1] == "vision"
    assert "vision" not in rows[TEXT_MODEL]


def test_each_image_adds_its_tokens(client: openai.OpenAI) -> None:
    plain = chat(client, [{"role": "user", "content": QUESTION}])
    one = chat(client, [image_message(data_url(1))])
    two = chat(client, [image_message(data_url(1), data_url(2))])
    base = plain.usage.prompt_tokens
    assert one.usage.prompt_tokens == base + vision.TOKENS_PER_IMAGE
    assert two.usage.prompt_tokens == base + 2 * vision.TOKENS_PER_IMAGE


def test_same_image_same_answer_other_image_other_answer(client: openai.OpenAI) -> None:
    first = chat(client, [image_message(data_url(1))]).choices[0].message.content
    again = chat(client, [image_message(data_url(1))]).choices[0].message.content
    other = chat(client, [image_message(data_url(2))]).choices[0].message.content
    assert first == again
    assert first != other


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF"])
def test_other_formats(client: openai.OpenAI, fmt: str) -> None:
    reply = chat(client, [image_message(data_url(3, fmt))])
    plain = chat(client, [{"role": "user", "content": QUESTION}])
    assert reply.usage.prompt_tokens == plain.usage.prompt_tokens + vision.TOKENS_PER_IMAGE


def test_streamed(client: openai.OpenAI) -> None:
    plain = chat(client, [image_message(data_url(4))]).choices[0].message.content
    chunks = list(
        chat(
            client,
            [image_message(data_url(4))],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > vision.TOKENS_PER_IMAGE


def test_second_turn_reuses_the_cached_image(client: openai.OpenAI) -> None:
    turn = [image_message(data_url(5))]
    first = chat(client, turn)
    follow = [
        *turn,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what colour is it?"},
    ]
    second = chat(client, follow)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The first turn's prompt, its image included, is not read again.
    assert cached >= first.usage.prompt_tokens - 1


def test_image_beside_text_streams(daemon: RunningDaemon, client: openai.OpenAI) -> None:
    alone = chat(client, [image_message(data_url(6))])
    results: dict[str, Any] = {}

    def text_stream(i: int) -> None:
        chunks = list(
            client.chat.completions.create(
                model=VLM,
                messages=[{"role": "user", "content": f"Count to {i + 5}"}],
                max_tokens=24,
                temperature=0,
                stream=True,
            )
        )
        results[f"text{i}"] = "".join(c.choices[0].delta.content or "" for c in chunks)

    def image_request() -> None:
        results["image"] = chat(client, [image_message(data_url(6))])

    threads = [threading.Thread(target=text_stream, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=image_request))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(results.get(f"text{i}") for i in range(3))
    assert results["image"].usage.prompt_tokens == alone.usage.prompt_tokens
    assert results["image"].choices[0].message.content


def test_responses_input_image(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=VLM,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": data_url(7), "detail": "auto"},
                    {"type": "input_text", "text": QUESTION},
                ],
            }
        ],
        max_output_tokens=8,
        temperature=0,
    )
    as_chat = chat(client, [image_message(data_url(7))])
    assert reply.usage is not None
    assert reply.usage.input_tokens == as_chat.usage.prompt_tokens
    assert reply.output_text


def test_anthropic_image_block(daemon: RunningDaemon, client: openai.OpenAI) -> None:
    messages = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0).messages
    data = base64.b64encode(vision.png_bytes(8)).decode()
    reply = messages.create(
        model=VLM,
        max_tokens=8,
        extra_body={"temperature": 0},
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": data},
                    },
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    as_chat = chat(client, [image_message(data_url(8))])
    assert reply.usage.input_tokens == as_chat.usage.prompt_tokens
    assert reply.content[0].type == "text"
    assert reply.content[0].text


def test_rest_v0_and_v1(daemon: RunningDaemon, client: openai.OpenAI) -> None:
    as_chat = chat(client, [image_message(data_url(9))])
    status, body = post_json(
        f"{daemon.url}/api/v0/chat/completions",
        {"model": VLM, "messages": [image_message(data_url(9))], "max_tokens": 8, "temperature": 0},
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == as_chat.usage.prompt_tokens
    assert body["choices"][0]["message"]["content"]
    status, body = post_json(
        f"{daemon.url}/api/v1/chat",
        {
            "model": VLM,
            "input": [
                {"type": "image", "data_url": data_url(9)},
                {"type": "message", "content": QUESTION},
            ],
            "max_output_tokens": 8,
            "temperature": 0,
            "store": False,
        },
    )
    assert status == 200, body
    assert body["stats"]["input_tokens"] == as_chat.usage.prompt_tokens


# -- errors ----------------------------------------------------------------------------------


def _status(call: Any) -> tuple[int, str]:
    try:
        call()
    except openai.APIStatusError as exc:
        return exc.status_code, str(exc.message)
    raise AssertionError("the request succeeded")


def test_image_to_a_text_model(client: openai.OpenAI) -> None:
    status, message = _status(lambda: chat(client, [image_message(data_url(1))], TEXT_MODEL))
    assert status == 400 and "cannot see images" in message


def test_corrupt_and_unsupported_images(client: openai.OpenAI) -> None:
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot a png").decode()
    assert _status(lambda: chat(client, [image_message(broken)]))[0] == 400
    bmp = vision.png_bytes(1, fmt="BMP")
    bmp_url = "data:image/bmp;base64," + base64.b64encode(bmp).decode()
    status, message = _status(lambda: chat(client, [image_message(bmp_url)]))
    assert status == 400 and "BMP" in message
    status, message = _status(lambda: chat(client, [image_message("https://example.com/cat.png")]))
    assert status == 400 and "data URL" in message


def test_too_many_images_for_the_context(client: openai.OpenAI) -> None:
    urls = [data_url(1)] * (1024 // vision.TOKENS_PER_IMAGE + 1)
    status, message = _status(lambda: chat(client, [image_message(*urls)]))
    assert status == 400 and "1024" in message


def test_image_too_large(daemon: RunningDaemon, client: openai.OpenAI) -> None:
    big = vision.png_bytes(1, size=256, fmt="BMP")  # uncompressed: ~196 kB
    assert len(big) > MAX_IMAGE_BYTES
    url = "data:image/bmp;base64," + base64.b64encode(big).decode()
    status, message = _status(lambda: chat(client, [image_message(url)]))
    assert status == 413 and str(MAX_IMAGE_BYTES) in message
    # Anthropic's error shape for the same mistake.
    messages = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0).messages
    with pytest.raises(anthropic.APIStatusError) as caught:
        messages.create(
            model=VLM,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/bmp",
                                "data": base64.b64encode(big).decode(),
                            },
                        }
                    ],
                }
            ],
        )
    assert caught.value.status_code == 413
    assert caught.value.body["type"] == "error"  # type: ignore[index]


def test_lmstudio_sdk_uploads_an_image_and_predicts_with_it(
    daemon: RunningDaemon, client: openai.OpenAI, tmp_path: Path
) -> None:
    lms = pytest.importorskip("lmstudio")
    picture = tmp_path / "picture.png"
    picture.write_bytes(vision.png_bytes(10))
    plain = chat(client, [{"role": "user", "content": QUESTION}])
    with lms.Client(daemon.url.removeprefix("http://")) as sdk:
        handle = sdk.files.prepare_image(picture)
        assert handle.file_type == "image" and handle.size_bytes == picture.stat().st_size
        history = lms.Chat()
        history.add_user_message(QUESTION, images=[handle])
        result = sdk.llm.model(VLM).respond(history, config={"maxTokens": 8, "temperature": 0})
        info = sdk.llm.model(VLM).get_info()
    # The SDK puts the text before the image: the image adds its tokens all the same.
    assert result.stats.prompt_tokens_count == plain.usage.prompt_tokens + vision.TOKENS_PER_IMAGE
    assert info.vision is True


def test_lms_load_of_the_vlm_loads_the_projector_and_counts_it(
    daemon: RunningDaemon, client: openai.OpenAI
) -> None:
    folder = daemon.models_dir / "lmsd-test" / "SmolLM2-135M-Vision-Test-GGUF"
    projector = (folder / vision.PROJECTOR_NAME).stat().st_size
    text_estimate = daemon.lms.json("load", TEXT_MODEL, "--estimate-only", "-c", "1024")
    vlm_estimate = daemon.lms.json("load", VLM, "--estimate-only", "-c", "1024")
    assert (
        vlm_estimate["estimate"]["weights_bytes"]
        == text_estimate["estimate"]["weights_bytes"] + projector
    )
    daemon.lms("load", VLM, "--identifier", "seeing", "-c", "1024", "-y", check=True)
    try:
        shown = {i["identifier"]: i for i in daemon.lms.json("ps")}["seeing"]
        assert shown["vision"] is True
        plain = chat(client, [{"role": "user", "content": QUESTION}], "seeing")
        seen = chat(client, [image_message(data_url(11))], "seeing")
        assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + vision.TOKENS_PER_IMAGE
    finally:
        daemon.lms("unload", "seeing")
