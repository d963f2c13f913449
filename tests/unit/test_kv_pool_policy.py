"""The shared KV pool's policy (llama_slots: room for each step's batch), without a model:
llama.cpp's decode, memory and sampler are replaced by fakes that keep each sequence's
cells, so the test sees exactly which cells the policy frees and who waits or ends.
The real model under the same policy: tests/integration/test_kv_pool.py."""

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.engines.base import DoneEvent, GenerationParams, StopReason

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)

TOKEN = 7


class FakeSampler:
    def __init__(self, vocab: Any, n_vocab: int, params: GenerationParams) -> None:
        pass

    def sample(self, ctx: Any, row: int) -> int:
        return TOKEN

    def close(self) -> None:
        pass


class FakeMemory:
    """Each sequence's cells, as llama.cpp would hold them; decode fails like llama.cpp
    (status 1, nothing written) when the batch does not fit the pool."""

    def __init__(self, pool: int) -> None:
        self.pool = pool
        self.cells: dict[int, int] = {}
        self.decoded = 0

    def seq_rm(self, memory: Any, seq: int, p0: int, p1: int) -> bool:
        self.cells[seq] = 0 if p0 < 0 else min(self.cells.get(seq, 0), p0)
        return True

    def decode(self, ctx: Any, batch: Any) -> int:
        if sum(self.cells.values()) + batch.n_tokens > self.pool:
            return 1
        for i in range(batch.n_tokens):
            seq = int(batch.seq_id[i][0])
            self.cells[seq] = self.cells.get(seq, 0) + 1
        self.decoded += batch.n_tokens
        return 0


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMemory]:
    from daemon.engines import llama_slots
    from daemon.engines.llama_lib import llama_cpp  # the bindings the engine calls

    memory = FakeMemory(pool=16)
    monkeypatch.setattr(llama_cpp, "llama_vocab_n_tokens", lambda vocab: 100)
    monkeypatch.setattr(llama_cpp, "llama_get_memory", lambda ctx: None)
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", memory.seq_rm)
    monkeypatch.setattr(llama_cpp, "llama_decode", memory.decode)
    monkeypatch.setattr(llama_cpp, "llama_vocab_is_eog", lambda vocab, token: False)
    monkeypatch.setattr(llama_slots, "Sampler", FakeSampler)
    yield memory


def make_slots(memory: FakeMemory, n_slots: int = 2) -> Any:
    from daemon.engines.llama_slots import LlamaSlots

    return LlamaSlots(
        None,
        None,
        n_slots=n_slots,
        context_length=memory.pool,
        n_batch=64,
        piece=lambda token: b"x",
        pool_cells=memory.pool,
        clock=iter(range(10_000)).__next__,  # a fake clock: every call one "second" later
    )


def run(slots: Any, memory: FakeMemory, requests: dict[int, tuple[int, int | None]]) -> list[Any]:
    """Admits (key -> (prompt length, max_tokens)) oldest key first and steps until all
    are done; returns the DoneEvents in the order they came, checking the pool each step."""
    for key, (length, max_tokens) in sorted(requests.items()):
        params = GenerationParams(max_tokens=max_tokens, temperature=0)
        slots.admit(key, [1 + key] * length, params, lambda: False, float(key))
    done: list[Any] = []
    for _ in range(500):
        for key, item in slots.step():
            assert not isinstance(item, Exception), item
            if isinstance(item, DoneEvent):
                done.append((key, item))
        assert sum(memory.cells.values()) <= memory.pool
        assert slots.cells_used() == sum(memory.cells.values())  # our count is llama.cpp's
        if len(done) == len(requests):
            return done
    raise AssertionError("the requests never finished")


def test_a_newer_prompt_waits_for_room_and_both_finish(fakes: FakeMemory) -> None:
    slots = make_slots(fakes)
    # 10 + 4 and 10 + 4 cells: more than the 16-cell pool together, each fits alone.
    done = run(slots, fakes, {0: (10, 4), 1: (10, 4)})
    assert [key for key, _ in done] == [0, 1]  # the older one first
    assert all(event.stop_reason is StopReason.MAX_TOKENS for _, event in done)
    assert all(event.completion_tokens == 4 for _, event in done)


def test_a_full_pool_ends_the_newest_generating_request(fakes: FakeMemory) -> None:
    slots = make_slots(fakes)
    done = dict(run(slots, fakes, {0: (3, None), 1: (3, None)}))
    newer, older = done[1], done[0]
    assert newer.stop_reason is StopReason.CONTEXT_FULL
    assert newer.prompt_tokens + newer.completion_tokens < 16
    # The older one had the whole pool in the end: the full context length.
    assert older.stop_reason is StopReason.CONTEXT_FULL
    assert older.prompt_tokens + older.completion_tokens == 16


def test_idle_cells_go_first_least_recently_used_and_from_the_end(fakes: FakeMemory) -> None:
    slots = make_slots(fakes, n_slots=3)
    run(slots, fakes, {0: (5, 1)})  # slot 0 caches 5 cells, used first
    run(slots, fakes, {1: (5, 1)})  # slot 1 caches 5 more, used later
    assert sorted(len(c) for c in slots.cached_tokens()) == [0, 5, 5]
    # 9 prompt cells (its one token ends it undecoded) with 6 free: 3 from the older cache,
    # taken from its end; the newer cache is untouched.
    run(slots, fakes, {2: (9, 1)})
    assert [len(c) for c in slots.cached_tokens()] == [2, 5, 9]
    # The first prompt again: the 2 cells left of its cache are not read again, and the 3
    # it reads come from the least recently used idle slot (slot 1, not slot 2).
    (done,) = run(slots, fakes, {0: (5, 1)})
    assert done[1].cached_tokens == 2
    assert [len(c) for c in slots.cached_tokens()] == [5, 2, 9]


def test_a_batch_llama_cpp_finds_no_room_for_ends_its_newest_request(
    fakes: FakeMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.engines.llama_lib import llama_cpp  # the bindings the engine calls

    real, calls = fakes.decode, 0

    def no_room_once(ctx: Any, batch: Any) -> int:
        nonlocal calls
        calls += 1
        return 1 if calls == 1 else real(ctx, batch)  # 1: no room, nothing written

    monkeypatch.setattr(llama_cpp, "llama_decode", no_room_once)
    slots = make_slots(fakes)
    done = dict(run(slots, fakes, {0: (4, 3), 1: (4, 3)}))
    assert done[1].stop_reason is StopReason.CONTEXT_FULL and done[1].completion_tokens == 0
    assert done[0].stop_reason is StopReason.MAX_TOKENS and done[0].completion_tokens == 3
