"""The worker's slot scheduler, driven through WorkerHandle with the fake engine (which has
`LoadSpec.parallel` slots): side by side streams, arrival order, queueing, cancellation."""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from daemon.engines.base import (
    CompletionRequest,
    DoneEvent,
    LoadSpec,
    StopReason,
    StreamEvent,
    TokenEvent,
)
from daemon.engines.host import WorkerHandle
from daemon.engines.slots import IteratorSlots
from daemon.errors import EngineError

DELAY = 0.02


@pytest.fixture
async def started() -> AsyncIterator[list[WorkerHandle]]:
    handles: list[WorkerHandle] = []
    yield handles
    for handle in handles:
        await handle.close(timeout=2)


async def start(handles: list[WorkerHandle], tmp_path: Path, parallel: int) -> WorkerHandle:
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"fake": True, "token_delay": DELAY}))
    handle = await WorkerHandle.start(LoadSpec(str(path), "fake", parallel=parallel))
    handles.append(handle)
    return handle


def words(text: str, n: int) -> CompletionRequest:
    return CompletionRequest(" ".join([text] * n))


async def collect(handle: WorkerHandle, request: CompletionRequest) -> tuple[str, DoneEvent, float]:
    """Text, DoneEvent and the monotonic time of the first token."""
    text, first = "", 0.0
    async for event in handle.generate(request):
        if isinstance(event, DoneEvent):
            return text, event, first
        first = first or time.monotonic()
        text += event.text
    raise AssertionError("no DoneEvent")


async def test_slots_run_side_by_side(tmp_path: Path, started: list[WorkerHandle]) -> None:
    handle = await start(started, tmp_path, parallel=3)
    seen: list[tuple[str, str]] = []  # (word, "token" or "done") in arrival order

    async def record(word: str) -> tuple[str, DoneEvent]:
        text = ""
        async for event in handle.generate(words(word, 20)):
            if isinstance(event, DoneEvent):
                seen.append((word, "done"))
                return text, event
            seen.append((word, "token"))
            text += event.text
        raise AssertionError("no DoneEvent")

    results = await asyncio.gather(*(record(w) for w in ("a", "b", "c")))
    for word, (text, done) in zip("abc", results, strict=True):
        assert text.split() == [word] * 20 and done.completion_tokens == 20
    # Not one after another: every stream had tokens before any of them was done.
    first_done = seen.index(next(item for item in seen if item[1] == "done"))
    assert {word for word, _ in seen[:first_done]} == {"a", "b", "c"}


async def test_requests_beyond_the_slots_wait_in_arrival_order(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, tmp_path, parallel=2)
    tasks = []
    sent = time.perf_counter()
    for word in ("a", "b", "c", "d"):
        tasks.append(asyncio.create_task(collect(handle, words(word, 10))))
        await asyncio.sleep(0.005)  # a definite arrival order
    # Answered once the worker has read every request before it (in order): c and d have
    # arrived by now.
    await handle.count_tokens("x")
    arrived_by = time.perf_counter()
    results = await asyncio.gather(*tasks)
    firsts = [first for _, _, first in results]
    assert firsts[0] <= firsts[1] < firsts[2] <= firsts[3]
    # c and d started only when a or b was done, which took 9 token delays (slept by the
    # fake engine) after they were sent; their time to first token counts from their
    # arrival at the worker, so it shows that wait.
    for _, done, _ in results[2:]:
        assert done.time_to_first_token >= 9 * DELAY - (arrived_by - sent)


async def test_quick_requests_are_answered_while_every_slot_is_busy(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, tmp_path, parallel=2)
    streams = [handle.generate(words(w, 500)) for w in ("a", "b", "c")]
    for stream in streams[:2]:
        await anext(stream)
    # A witness reads stream a meanwhile: its tokens are the clock. Had the quick requests
    # waited for a free slot, a would have run to its end (500 tokens) first.
    tokens = 0

    async def witness() -> None:
        nonlocal tokens
        async for event in streams[0]:
            tokens += isinstance(event, TokenEvent)

    watching = asyncio.create_task(witness())
    assert await handle.count_tokens("one two") == 2
    assert "<|user|>" in await handle.render_chat([{"role": "user", "content": "x"}])
    assert tokens < 250, f"answered only after {tokens} tokens of a busy slot"
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    for stream in streams:
        await stream.aclose()


async def test_a_cancelled_queued_request_leaves_the_queue(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, tmp_path, parallel=1)
    endless = words("b", 3000)  # a minute of tokens: the third would wait for it
    running = handle.generate(words("a", 3000))
    await anext(running)
    waiting = asyncio.create_task(collect(handle, endless))  # queued behind `running`
    await asyncio.sleep(0.1)
    waiting.cancel()  # the consumer goes away: the worker drops it from its queue
    with pytest.raises(asyncio.CancelledError):
        await waiting
    third = asyncio.create_task(collect(handle, words("c", 3)))
    await asyncio.sleep(0.1)
    await running.aclose()  # frees the slot: the third runs, not the cancelled one
    text, done, _ = await asyncio.wait_for(third, 5)
    assert text.split() == ["c"] * 3 and done.stop_reason is StopReason.EOS


async def test_cancelling_one_stream_leaves_the_others_running(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, tmp_path, parallel=3)
    streams = [handle.generate(words(w, 30)) for w in ("a", "b", "c")]
    for stream in streams:
        await anext(stream)
    await streams[1].aclose()
    for word, stream in ((w, s) for w, s in zip("ac", (streams[0], streams[2]), strict=True)):
        texts = [e.text async for e in stream if isinstance(e, TokenEvent)]
        assert "".join(texts).split() == [word] * 29


def _events(*items: StreamEvent) -> Callable[..., object]:
    def start(request: object, cancelled: object) -> object:
        return iter(items)

    return start


def test_iterator_slots_adds_the_wait_to_the_time_to_first_token() -> None:
    done = DoneEvent(StopReason.EOS, 1, 1, 0.5, 0.0, 0.0)
    clock = iter([10.0]).__next__
    slots = IteratorSlots(_events(TokenEvent("x", 1), done), 1, clock=clock)  # type: ignore[arg-type]
    slots.admit(7, CompletionRequest("p"), lambda: False, arrived=8.0)
    assert slots.free_slots() == 0 and slots.active() == 1
    with pytest.raises(EngineError):
        slots.admit(8, CompletionRequest("p"), lambda: False, arrived=8.0)
    assert slots.step() == [(7, TokenEvent("x", 1))]
    ((key, last),) = slots.step()
    assert key == 7 and isinstance(last, DoneEvent) and last.time_to_first_token == 2.5
    assert slots.free_slots() == 1


def test_iterator_slots_reports_a_stream_without_a_final_event() -> None:
    slots = IteratorSlots(_events(), 1)  # type: ignore[arg-type]
    slots.admit(1, CompletionRequest("p"), lambda: False, arrived=0.0)
    ((key, error),) = slots.step()
    assert key == 1 and isinstance(error, EngineError) and slots.active() == 0
