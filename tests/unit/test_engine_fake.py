"""The fake engine used directly (no worker), and the stream shaping every engine shares."""

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    GenerationRequest,
    LoadSpec,
    StopReason,
    StreamEvent,
    TokenEvent,
)
from daemon.engines.fake_impl import DELAY_ENV, FakeEngine
from daemon.engines.runtime import engine_available, load_engine_class
from daemon.engines.streaming import RawToken, StopMatcher, shape_stream
from daemon.errors import ContextOverflow, LoadFailed, UnknownEngine


def model(tmp_path: Path, **options: object) -> str:
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"fake": True, **options}))
    return str(path)


def loaded(tmp_path: Path, **options: object) -> FakeEngine:
    engine = FakeEngine()
    engine.load(LoadSpec(model(tmp_path, **options), "fake"))
    return engine


def run(
    engine: FakeEngine, request: GenerationRequest, cancel_after: int | None = None
) -> tuple[list[TokenEvent], DoneEvent]:
    tokens: list[TokenEvent] = []
    events: Iterator[StreamEvent] = engine.generate(
        request, lambda: cancel_after is not None and len(tokens) >= cancel_after
    )
    for event in events:
        if isinstance(event, DoneEvent):
            return tokens, event
        tokens.append(event)
    raise AssertionError("no DoneEvent")


def text_of(tokens: list[TokenEvent]) -> str:
    return "".join(t.text for t in tokens)


def test_echoes_the_last_user_message_word_by_word(tmp_path: Path) -> None:
    engine = loaded(tmp_path)
    request = ChatRequest(
        [{"role": "user", "content": "old"}, {"role": "user", "content": "hello big world"}]
    )
    tokens, done = run(engine, request)
    assert [t.text for t in tokens] == ["hello ", "big ", "world"]
    assert done.stop_reason is StopReason.EOS
    assert done.completion_tokens == 3
    assert done.prompt_tokens == engine.count_tokens(engine.render_chat(request.messages))


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("a be", "alph"),  # starts inside "alpha ", ends inside "beta "
        ("ta gam", "alpha be"),
        ("gamma", "alpha beta "),
        ("alpha", ""),
        ("zzz", "alpha beta gamma"),  # never found: held-back text comes out at the end
        ("gammaX", "alpha beta gamma"),  # a prefix of it ends the stream
    ],
)
def test_stop_strings_split_across_tokens(tmp_path: Path, stop: str, expected: str) -> None:
    engine = loaded(tmp_path)
    params = GenerationParams(stop=[stop])
    tokens, done = run(engine, CompletionRequest("alpha beta gamma", params))
    assert text_of(tokens) == expected
    assert stop not in text_of(tokens)
    if stop in "alpha beta gamma":
        assert done.stop_reason is StopReason.STOP_STRING
        assert done.stop_string == stop
    else:
        assert done.stop_reason is StopReason.EOS
        assert done.stop_string is None


def test_the_earliest_of_several_stop_strings_wins(tmp_path: Path) -> None:
    engine = loaded(tmp_path)
    params = GenerationParams(stop=["gamma", "beta"])
    tokens, done = run(engine, CompletionRequest("alpha beta gamma", params))
    assert (text_of(tokens), done.stop_string) == ("alpha ", "beta")


def test_max_tokens(tmp_path: Path) -> None:
    engine = loaded(tmp_path, endless=True)
    tokens, done = run(engine, CompletionRequest("one two", GenerationParams(max_tokens=5)))
    assert text_of(tokens) == "one two one two one "
    assert (done.stop_reason, done.completion_tokens) == (StopReason.MAX_TOKENS, 5)


def test_an_endless_stream_stops_when_the_context_is_full(tmp_path: Path) -> None:
    engine = loaded(tmp_path, endless=True, context_length=10)
    _, done = run(engine, CompletionRequest("a b c"))
    assert done.stop_reason is StopReason.CONTEXT_FULL
    assert done.prompt_tokens + done.completion_tokens == 10


def test_a_prompt_that_does_not_fit_fails_before_generating(tmp_path: Path) -> None:
    engine = loaded(tmp_path, context_length=4)
    with pytest.raises(ContextOverflow) as caught:
        engine.generate(CompletionRequest("a b c d e f"), lambda: False)
    assert (caught.value.prompt_tokens, caught.value.context_length) == (6, 4)


def test_same_seed_same_output_other_seed_other_output(tmp_path: Path) -> None:
    engine = loaded(tmp_path, babble=True)

    def babble(seed: int) -> str:
        params = GenerationParams(seed=seed, max_tokens=12)
        return text_of(run(engine, CompletionRequest("x", params))[0])

    assert babble(1) == babble(1)
    assert babble(1) != babble(2)


def test_cancel_ends_with_user_stopped(tmp_path: Path) -> None:
    engine = loaded(tmp_path, endless=True)
    tokens, done = run(engine, CompletionRequest("on and on"), cancel_after=4)
    assert len(tokens) == 4
    assert done.stop_reason is StopReason.USER_STOPPED


def test_logprobs_when_asked(tmp_path: Path) -> None:
    engine = loaded(tmp_path)
    params = GenerationParams(logprobs=True, top_logprobs=2)
    tokens, _ = run(engine, CompletionRequest("a b", params))
    assert all(
        t.logprob is not None and t.top_logprobs and len(t.top_logprobs) == 2 for t in tokens
    )
    plain, _ = run(engine, CompletionRequest("a b"))
    assert all(t.logprob is None and t.top_logprobs is None for t in plain)


def test_the_token_delay_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DELAY_ENV, "0.05")
    engine = loaded(tmp_path)
    began = time.perf_counter()
    _, done = run(engine, CompletionRequest("a b c"))
    assert time.perf_counter() - began >= 0.15
    assert done.tokens_per_second < 30


def test_embeddings_are_deterministic_unit_vectors(tmp_path: Path) -> None:
    engine = loaded(tmp_path, embedding_dim=8)
    first = engine.embed(["cat", "dog"])
    assert first.vectors == engine.embed(["cat", "dog"]).vectors
    assert first.vectors[0] != first.vectors[1]
    for vector in first.vectors:
        assert len(vector) == 8
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0)


def test_load_failures_are_typed(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="not found"):
        FakeEngine().load(LoadSpec(str(tmp_path / "missing.json"), "fake"))
    with pytest.raises(LoadFailed, match="unknown fake model options"):
        FakeEngine().load(LoadSpec(model(tmp_path, token_dealy=1), "fake"))
    with pytest.raises(LoadFailed, match="disk on fire"):
        FakeEngine().load(LoadSpec(model(tmp_path, fail_load="disk on fire"), "fake"))


def test_engines_are_found_by_name_lazily() -> None:
    assert load_engine_class("fake") is FakeEngine
    assert engine_available("fake") and not engine_available("nope")
    with pytest.raises(UnknownEngine, match="nope"):
        load_engine_class("nope")


# -- the shared shaper, fed raw tokens directly -------------------------------------


def raw(*pieces: bytes) -> Iterator[RawToken]:
    for i, piece in enumerate(pieces):
        yield RawToken(i + 1, piece)
    yield RawToken(0, b"", eog=True)


def shaped(tokens: Iterator[RawToken], **params: object) -> list[StreamEvent]:
    return list(
        shape_stream(
            tokens,
            params=GenerationParams(**params),  # type: ignore[arg-type]
            prompt_tokens=1,
            context_length=100,
            cancelled=lambda: False,
            started=0.0,
        )
    )


def test_a_character_split_across_tokens_is_emitted_whole() -> None:
    snowman = "☃".encode()
    events = shaped(raw(b"a", snowman[:1], snowman[1:], b"b"))
    texts = [e.text for e in events if isinstance(e, TokenEvent)]
    assert texts == ["a", "", "☃", "b"]
    assert "\ufffd" not in "".join(texts)


def test_a_stop_string_is_found_across_a_split_character() -> None:
    snowman = "☃".encode()
    events = shaped(raw(b"x", snowman[:2], snowman[2:] + b"y"), stop=["☃y"])
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "x"
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].stop_reason is StopReason.STOP_STRING


def test_the_stream_closes_the_engine_iterator_when_it_stops_early() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[RawToken]:
        try:
            while True:
                yield RawToken(5, b"w ")
        finally:
            closed.append(True)

    events = shaped(endless(), max_tokens=3)
    assert isinstance(events[-1], DoneEvent) and events[-1].completion_tokens == 3
    assert closed == [True]


def test_timing_is_measured_from_the_clock() -> None:
    ticks = iter([1.0, 1.5, 2.0, 2.5, 3.0])
    events = list(
        shape_stream(
            raw(b"a", b"b", b"c"),
            params=GenerationParams(),
            prompt_tokens=1,
            context_length=100,
            cancelled=lambda: False,
            started=0.5,
            clock=lambda: next(ticks),
        )
    )
    done = events[-1]
    assert isinstance(done, DoneEvent)
    # samples at 1.0 (a), 1.5 (b), 2.0 (c), 2.5 (EOS); the end read at 3.0
    assert done.time_to_first_token == pytest.approx(0.5)
    assert done.generation_time == pytest.approx(1.5)
    assert done.tokens_per_second == pytest.approx(3 / 1.5)


def test_stop_matcher_holds_back_only_what_could_start_a_stop() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("hello </") == ("hello ", None)
    assert matcher.feed("b>") == ("</b>", None)
    assert matcher.feed("x</en") == ("x", None)
    assert matcher.feed("d>tail") == ("", "</end>")
    assert StopMatcher([]).feed("abc") == ("abc", None)
