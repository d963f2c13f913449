"""Images in requests: the translators as plain functions (every surface's image shape ->
ImagePart), image decoding, and the routes in process against the fake engine (a `vlm`
is a GGUF with a projector beside it; the fake engine does not look at the pixels)."""

import base64
import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.catalog import scan
from daemon.compat.anthropic import parse_request as parse_messages_request
from daemon.compat.images import image_from_base64, image_from_url
from daemon.compat.lmstudio_v1 import parse_chat as parse_v1_chat
from daemon.compat.openai_responses import parse_response_request
from daemon.compat.requests import parse_chat
from daemon.engines import images
from daemon.engines.base import ChatRequest, request_from_dict
from daemon.errors import InvalidRequest, PayloadTooLarge
from daemon.instance import LoadConfig
from daemon.memory import estimate
from daemon.prediction.service import template_messages
from daemon.prediction.types import ImagePart, ImageUrl, Message, TextPart
from daemon.sdk.files import UploadedFiles
from daemon.sdk.translate import history_messages
from daemon.server import Daemon
from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, write_gguf, write_mmproj
from tests.inprocess import Client, running_daemon


def picture(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 30)).save(out, format=fmt)
    return out.getvalue()


PNG = picture()
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def chat_body(model: str, url: str = PNG_URL) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look:"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }


# -- translators ----------------------------------------------------------------------------


def test_a_data_url_becomes_an_image_part() -> None:
    part = image_from_url(PNG_URL, param="p")
    assert part == ImagePart(PNG, "image/png")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://user:secret@example.com/a.png", "user name or password"),
        ("http:///a.png", "not a valid http(s) URL"),
        ("https://example.com:99999/a.png", "not a valid http(s) URL"),
        ("file:///etc/passwd", "data URL"),
        ("data:image/png,notbase64", "data URL"),
        ("data:image/png;base64,%%%", "not valid base64"),
        ("data:text/plain;base64,aGk=", "send an image"),
        (42, "string URL"),
    ],
)
def test_bad_image_urls_are_400s(url: Any, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        image_from_url(url, param="p")
    assert says in str(caught.value)


def test_a_web_url_is_left_for_the_service_to_fetch() -> None:
    assert image_from_url("https://example.com/a.png", param="p") == ImageUrl(
        "https://example.com/a.png", "p"
    )


def test_openai_chat_image_url_part() -> None:
    parsed = parse_chat(chat_body("m"))
    (message,) = parsed.prediction.messages
    assert message.content == (TextPart("look:"), ImagePart(PNG, "image/png"))


def test_responses_input_image() -> None:
    parsed = parse_response_request(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look:"},
                        {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                    ],
                }
            ],
        }
    )
    assert parsed.input[-1].images == (ImagePart(PNG, "image/png"),)


def test_anthropic_image_block() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}
    parsed = parse_messages_request(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": source}, {"type": "text", "text": "?"}],
                }
            ],
        }
    )
    (message,) = parsed.prediction.messages
    assert message.content == (ImagePart(PNG, "image/png"), TextPart("?"))
    url_source = {"type": "url", "url": "https://example.com/a.png"}
    parsed = parse_messages_request(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image", "source": url_source}]}],
        }
    )
    (message,) = parsed.prediction.messages
    assert message.content == (
        ImageUrl("https://example.com/a.png", "messages[0].content[0].source.url"),
    )


def test_rest_v1_image_item() -> None:
    parsed = parse_v1_chat(
        {
            "model": "m",
            "input": [{"type": "image", "data_url": PNG_URL}, {"type": "text", "content": "?"}],
        }
    )
    assert parsed.input[0].content == (ImagePart(PNG, "image/png"), TextPart("?"))


def test_base64_media_type_is_checked() -> None:
    with pytest.raises(InvalidRequest, match="media type"):
        image_from_base64(base64.b64encode(PNG).decode(), "application/pdf", param="p")


def test_template_messages_put_a_marker_where_each_image_goes() -> None:
    found: list[ImagePart] = []
    part = ImagePart(PNG, "image/png")
    messages = (Message("user", (TextPart("a "), part, TextPart(" b"), part)),)
    rendered = template_messages(messages, found)
    assert rendered == [{"role": "user", "content": "a <__media__> b<__media__>"}]
    assert found == [part, part]
    with pytest.raises(InvalidRequest):
        template_messages(messages)  # where images cannot go (count_tokens, ...)


def test_chat_request_carries_its_images_to_the_worker() -> None:
    request = ChatRequest([{"role": "user", "content": "<__media__>"}], images=["aGk="])
    again = request_from_dict(request.to_dict())
    assert isinstance(again, ChatRequest) and again.images == ["aGk="]


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decodes_the_formats(fmt: str) -> None:
    decoded = images.decode(picture(fmt))
    assert (decoded.width, decoded.height) == (8, 6)
    assert len(decoded.rgb) == 8 * 6 * 3


def test_a_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    decoded = images.decode(out.getvalue())
    assert decoded.rgb[:3] == bytes([255, 0, 0])


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not an image at all", "not a picture"),
        (picture("JPEG", (64, 64))[:300], "damaged"),
        (picture("BMP"), "BMP"),
    ],
)
def test_bad_images_are_400s(data: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        images.decode(data, param="image 1")
    assert says in str(caught.value) and "image 1" in str(caught.value)


def test_the_hash_names_the_bytes() -> None:
    assert images.image_id(PNG) == images.image_id(bytes(PNG))
    assert images.image_id(PNG) != images.image_id(picture("JPEG"))


# -- routes, in process -----------------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    folder = tmp_path / "models" / "test" / "seer"
    write_gguf(folder / "seer-Q4_K_M.gguf", name="seer", chat_template=PLAIN_TEMPLATE)
    write_mmproj(folder / "mmproj-seer-f16.gguf")
    async with running_daemon(tmp_path, max_image_bytes=len(PNG) + 10) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


async def post(client: Client, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(path, json=payload, headers={"anthropic-version": "2023-06-01"})
    return response.status, await response.json()


async def test_a_vision_model_takes_an_image(client: Client) -> None:
    status, body = await post(client, "/v1/chat/completions", chat_body("seer"))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]


async def test_listed_as_vlm(client: Client) -> None:
    response = await client.get("/api/v0/models")
    models = {m["id"]: m for m in (await response.json())["data"]}
    assert models["seer"]["type"] == "vlm" and models["echo"]["type"] == "llm"


async def test_a_model_without_vision_says_it_cannot_see(client: Client) -> None:
    status, body = await post(client, "/v1/chat/completions", chat_body("echo"))
    assert status == 400
    assert "cannot see images" in body["error"]["message"]
    assert body["error"]["code"] == "model_not_vision"


async def test_a_corrupt_image_is_a_400(client: Client) -> None:
    broken = "data:image/png;base64," + base64.b64encode(PNG[:30]).decode()
    status, body = await post(client, "/v1/chat/completions", chat_body("seer", broken))
    assert status == 400 and body["error"]["code"] == "invalid_image"


async def test_an_image_url_on_the_web_is_a_400(client: Client) -> None:
    status, body = await post(
        client, "/v1/chat/completions", chat_body("seer", "https://example.com/a.png")
    )
    assert status == 400 and "data URL" in body["error"]["message"]
    assert body["error"]["code"] == "image_url_not_supported"
    assert "image_urls setting" in body["error"]["message"]


async def test_too_many_bytes_is_a_413_in_each_surface_shape(client: Client) -> None:
    big = picture(size=(64, 64))
    assert len(big) > len(PNG) + 10
    url = "data:image/png;base64," + base64.b64encode(big).decode()
    status, body = await post(client, "/v1/chat/completions", chat_body("seer", url))
    assert status == 413 and body["error"]["code"] == "image_too_large"
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(big).decode()}
    status, body = await post(
        client,
        "/v1/messages",
        {
            "model": "seer",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}],
        },
    )
    assert status == 413 and body["type"] == "error"
    assert body["error"]["type"] == "request_too_large"


# -- the SDK's uploaded files -------------------------------------------------------------------


async def test_uploaded_images_are_named_by_a_chat_file_part() -> None:
    files = UploadedFiles(max_file_bytes=len(PNG) + 10, max_files=2)
    handle = await files.upload("a.png", base64.b64encode(PNG).decode())
    assert handle["fileType"] == "image" and handle["sizeBytes"] == len(PNG)
    history = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "file", "name": "a.png", "fileType": "image", **handle},
                ],
            }
        ]
    }
    (message,) = history_messages(history, files.image)
    assert message.content == (TextPart("look"), ImagePart(PNG, "image/*"))
    with pytest.raises(InvalidRequest, match="no uploaded file"):
        files.image("file-nope")


async def test_uploads_are_checked_and_bounded() -> None:
    files = UploadedFiles(max_file_bytes=len(PNG) + 10, max_files=2)
    with pytest.raises(InvalidRequest, match="not an image"):
        await files.upload("a.txt", base64.b64encode(b"hello").decode())
    with pytest.raises(PayloadTooLarge):
        await files.upload("big.png", base64.b64encode(picture(size=(64, 64))).decode())
    handles = [
        await files.upload(f"{i}.png", base64.b64encode(picture(size=(2 + i, 2))).decode())
        for i in range(3)
    ]
    with pytest.raises(InvalidRequest):  # the oldest went first
        files.image(handles[0]["identifier"])
    assert files.image(handles[2]["identifier"]).data


def test_the_estimate_counts_the_projector(tmp_path: Path) -> None:
    folder = tmp_path / "test" / "seer"
    write_gguf(folder / "seer-Q4_K_M.gguf", name="seer", chat_template=PLAIN_TEMPLATE)
    projector = write_mmproj(folder / "mmproj-seer-f16.gguf")
    (record,) = scan([tmp_path]).records
    assert record.type == "vlm" and record.mmproj_bytes == projector.stat().st_size
    config = LoadConfig(context_length=1024, gpu_ratio=0.0, parallel=1)
    plain = estimate(dataclasses.replace(record, type="llm"), config)
    assert estimate(record, config).weights_bytes == plain.weights_bytes + record.mmproj_bytes
