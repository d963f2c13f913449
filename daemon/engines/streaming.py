"""Turns an engine's raw sampled tokens into TokenEvents and a DoneEvent, the same way for
every engine: stop strings (also when split across tokens), max_tokens, a full context,
cancellation, UTF-8 split across tokens, and honest timing."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from daemon.engines.base import DoneEvent, GenerationParams, StopReason, StreamEvent, TokenEvent


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


def shape_stream(
    raw: Iterator[RawToken],
    *,
    params: GenerationParams,
    prompt_tokens: int,
    context_length: int,
    cancelled: Callable[[], bool],
    started: float,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[StreamEvent]:
    """Pulls tokens from `raw` lazily (each `next()` samples one) and closes it when done.
    `started` is the clock reading when the request began (before prompt processing)."""
    matcher = StopMatcher(params.stop)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    limit = params.max_tokens
    produced = samples = 0
    first: float | None = None
    last: float | None = None
    reason: StopReason | None = None
    stop_string: str | None = None
    if limit is not None and limit <= 0:
        reason = StopReason.MAX_TOKENS
    try:
        while reason is None:
            if cancelled():
                reason = StopReason.USER_STOPPED
                break
            token = next(raw, None)
            now = clock()
            if token is None:  # the engine stopped early: it saw the cancel, or ran dry
                reason = StopReason.USER_STOPPED if cancelled() else StopReason.EOS
                break
            samples += 1
            first = now if first is None else first
            last = now
            if token.eog:
                reason = StopReason.EOS
                break
            produced += 1
            text, stop_string = matcher.feed(decoder.decode(token.piece))
            if stop_string is not None:
                reason = StopReason.STOP_STRING
            elif limit is not None and produced >= limit:
                reason = StopReason.MAX_TOKENS
            elif prompt_tokens + produced >= context_length:
                reason = StopReason.CONTEXT_FULL
            yield TokenEvent(
                text=text,
                token_id=token.token_id,
                logprob=token.logprob,
                top_logprobs=token.top_logprobs,
                piece=token.piece.decode("utf-8", errors="replace"),
            )
    finally:
        close = getattr(raw, "close", None)
        if close is not None:
            close()
    if reason is not StopReason.STOP_STRING:
        text, found = matcher.feed(decoder.decode(b"", final=True))
        if found is not None:
            reason, stop_string = StopReason.STOP_STRING, found
        else:
            text += matcher.flush()
        if text:
            yield TokenEvent(text=text, token_id=None)
    assert reason is not None
    ended = clock()
    generation_time = (last - first) if first is not None and last is not None else 0.0
    yield DoneEvent(
        stop_reason=reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=produced,
        time_to_first_token=(first if first is not None else ended) - started,
        generation_time=generation_time,
        tokens_per_second=(samples - 1) / generation_time if generation_time > 0 else 0.0,
        stop_string=stop_string,
    )
