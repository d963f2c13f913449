"""Turns an engine's raw sampled tokens into TokenEvents and a DoneEvent, the same way for
every engine: stop strings (also when split across tokens), max_tokens, a full context,
cancellation, UTF-8 split across tokens, and honest timing."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.engines.base import (
    ChatRequest,
    DoneEvent,
    GenerationParams,
    GenerationRequest,
    StopReason,
    StreamEvent,
    TokenEvent,
    check_token_ids,
)
from daemon.errors import ContextOverflow, InvalidRequest


@dataclass(frozen=True)
class RawToken:
    """One token as an engine sampled it."""

    token_id: int
    piece: bytes  # the token's bytes (may be part of a UTF-8 character)
    eog: bool = False  # end of generation (EOS, EOT, ...): not emitted, not counted
    logprob: float | None = None
    top_logprobs: list[tuple[str, float]] | None = None


class StopMatcher:
    """Finds stop strings in streamed text. Text that could be the start of a stop string
    is held back until the next piece settles it; a stop string itself is never emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string found or None). After a stop
        string is found, everything after it is dropped."""
        buffer = self._held + text
        self._held = ""
        found: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
        if found is not None:
            return buffer[: found[0]], found[1]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """Releases held-back text (the stream ended without a stop string)."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        longest = max((len(s) for s in self._stops), default=0)
        for size in range(min(len(buffer), longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0


class StreamShaper:
    """The push form of `shape_stream`, for engines that step several requests at once:
    feed it each sampled token (`feed`) or tell it the stream ended (`end`); both return
    the events to send. After a DoneEvent it is `finished` and takes nothing more."""

    def __init__(
        self,
        *,
        params: GenerationParams,
        prompt_tokens: int,
        context_length: int,
        started: float,
        cached_tokens: int = 0,
    ) -> None:
        self._params = params
        self.cached_tokens = cached_tokens  # prompt tokens reused from the prompt cache
        self._prompt_tokens = prompt_tokens
        self._context_length = context_length
        self._started = started
        self._matcher = StopMatcher(params.stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.produced = 0  # tokens emitted (EOS not counted)
        self._samples = 0
        self._first: float | None = None
        self._last: float | None = None
        self.finished = False

    def limit_reached(self) -> bool:
        """True before any token when max_tokens <= 0: nothing is to be generated."""
        limit = self._params.max_tokens
        return limit is not None and limit <= 0

    def feed(self, token: RawToken, now: float) -> list[StreamEvent]:
        """One sampled token, read at clock time `now`."""
        self._samples += 1
        self._first = now if self._first is None else self._first
        self._last = now
        if token.eog:
            return self.end(StopReason.EOS, now)
        self.produced += 1
        text, stop_string = self._matcher.feed(self._decoder.decode(token.piece))
        event = TokenEvent(
            text=text,
            token_id=token.token_id,
            logprob=token.logprob,
            top_logprobs=token.top_logprobs,
            piece=token.piece.decode("utf-8", errors="replace"),
            piece_bytes=list(token.piece),
        )
        limit = self._params.max_tokens
        if stop_string is not None:
            return [event, self._done(StopReason.STOP_STRING, now, stop_string)]
        if limit is not None and self.produced >= limit:
            return [event, *self.end(StopReason.MAX_TOKENS, now)]
        if self._prompt_tokens + self.produced >= self._context_length:
            return [event, *self.end(StopReason.CONTEXT_FULL, now)]
        return [event]

    def end(self, reason: StopReason, now: float) -> list[StreamEvent]:
        """The stream ends for `reason` (not a stop string): held-back text comes out in a
        last TokenEvent (unless it completes a stop string), then the DoneEvent."""
        events: list[StreamEvent] = []
        stop_string: str | None = None
        text, found = self._matcher.feed(self._decoder.decode(b"", final=True))
        if found is not None:
            reason, stop_string = StopReason.STOP_STRING, found
        else:
            text += self._matcher.flush()
        if text:
            events.append(TokenEvent(text=text, token_id=None))
        events.append(self._done(reason, now, stop_string))
        return events

    def _done(self, reason: StopReason, now: float, stop_string: str | None) -> DoneEvent:
        self.finished = True
        first, last = self._first, self._last
        generation_time = (last - first) if first is not None and last is not None else 0.0
        return DoneEvent(
            stop_reason=reason,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self.produced,
            time_to_first_token=(first if first is not None else now) - self._started,
            generation_time=generation_time,
            tokens_per_second=(
                (self._samples - 1) / generation_time if generation_time > 0 else 0.0
            ),
            stop_string=stop_string,
            cached_tokens=self.cached_tokens,
        )


def shape_stream(
    raw: Iterator[RawToken],
    *,
    params: GenerationParams,
    prompt_tokens: int,
    context_length: int,
    cancelled: Callable[[], bool],
    started: float,
    clock: Callable[[], float] = time.perf_counter,
    cached_tokens: Callable[[], int] = lambda: 0,
) -> Iterator[StreamEvent]:
    """Pulls tokens from `raw` lazily (each `next()` samples one) and closes it when done.
    `started` is the clock reading when the request began (before prompt processing);
    `cached_tokens` tells, once the prompt is read, how much of it came from a cache."""
    shaper = StreamShaper(
        params=params, prompt_tokens=prompt_tokens, context_length=context_length, started=started
    )
    last: list[StreamEvent] = []
    try:
        if shaper.limit_reached():
            last = shaper.end(StopReason.MAX_TOKENS, clock())
        while not shaper.finished:
            if cancelled():
                last = shaper.end(StopReason.USER_STOPPED, clock())
                break
            token = next(raw, None)
            now = clock()
            if token is None:  # the engine stopped early: it saw the cancel, or ran dry
                reason = StopReason.USER_STOPPED if cancelled() else StopReason.EOS
                last = shaper.end(reason, now)
                break
            shaper.cached_tokens = cached_tokens()
            events = shaper.feed(token, now)
            if shaper.finished:  # the raw stream is closed before the final events
                last = events
                break
            yield from events
    finally:
        close = getattr(raw, "close", None)
        if close is not None:
            close()
    yield from last


def check_prompt_size(text: str, context_length: int, max_token_bytes: int | None) -> None:
    """Raises ContextOverflow, without tokenizing, for a text too long to fit the context
    whatever its tokens: no token covers more than `max_token_bytes` bytes of text (the
    vocabulary's longest token), so a text of N bytes is at least N / max_token_bytes
    tokens. None: the tokenizer has no such bound (nothing is checked)."""
    if max_token_bytes is None or max_token_bytes <= 0:
        return
    if len(text) < context_length:  # a character is at least one byte: cannot overflow
        return
    at_least = len(text.encode("utf-8", "surrogatepass")) // max_token_bytes
    if at_least >= context_length:
        raise ContextOverflow(at_least, context_length, at_least=True)


def prompt_tokens(
    request: GenerationRequest,
    render_chat: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, bool], str],
    tokenize: Callable[[str], list[int]],
    context_length: int,
    n_vocab: int,
    max_token_bytes: int | None = None,
) -> list[int]:
    """The request's prompt as tokens (a chat through the model's own template; token ids
    as they are, once checked against the vocabulary), refused before anything runs when
    it is empty or does not fit the context (a text far too long for the context before it
    is tokenized, see check_prompt_size)."""
    if isinstance(request, ChatRequest) and request.images:
        raise InvalidRequest(
            "this model's engine cannot read images (only GGUF vision models through "
            "llama.cpp can); send text",
            param="messages",
            code="model_not_vision",
        )
    if isinstance(request, ChatRequest):
        text = render_chat(request.messages, request.tools, request.add_generation_prompt)
        check_prompt_size(text, context_length, max_token_bytes)
        tokens = tokenize(text)
    elif isinstance(request.prompt, str):
        check_prompt_size(request.prompt, context_length, max_token_bytes)
        tokens = tokenize(request.prompt)
    else:
        tokens = list(request.prompt)
        check_token_ids(tokens, n_vocab, param="prompt")
    if not tokens:
        raise InvalidRequest("the prompt is empty", param="prompt")
    if len(tokens) >= context_length:
        raise ContextOverflow(len(tokens), context_length)
    return tokens
