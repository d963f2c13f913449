"""The model manager with the fake engine in real worker processes and a controllable
clock: leases, idle TTL, shared JIT loads, auto-evict, guardrail, crashes."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.catalog import Catalog, ModelRecord
from daemon.config import Settings
from daemon.engines.base import ChatRequest, GenerationParams, LoadSpec
from daemon.engines.host import WorkerHandle
from daemon.errors import InsufficientMemory, InvalidRequest, ModelNotLoaded, WorkerCrashed
from daemon.instance import Instance, LoadRequest, State
from daemon.manager import ModelManager


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """The two things the manager asks of the model store, over a fixed catalog."""

    def __init__(self, records: list[ModelRecord]) -> None:
        self._catalog = Catalog(records)

    async def resolve(self, name: str) -> ModelRecord:
        return self._catalog.resolve(name)

    async def catalog(self, *, max_age: float = 1.0) -> Catalog:
        return self._catalog


def fake_model(folder: Path, key: str, **options: Any) -> ModelRecord:
    path = folder / f"{key}.json"
    path.write_text(json.dumps({"fake": True, **options}))
    return ModelRecord(
        key=key,
        path=f"test/{key}",
        abs_path=path,
        models_dir=folder,
        publisher="test",
        repo=key,
        format="gguf",
        type="llm",
        arch="fake",
        quantization="F16",
        max_context_length=4096,
        size_bytes=1000,
        params_string=None,
        capabilities=(),
        display_name=key,
        files=(path,),
    )


EPOCH = 1_700_000_000.0  # the wall clock is the same injected clock, shifted


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.clock = Clock()
        self.starts = 0
        self.free_memory = 64 * 1024**3
        records = [
            fake_model(tmp_path, "alpha"),
            fake_model(tmp_path, "beta"),
            fake_model(tmp_path, "slow", token_delay=0.05, endless=True),
            fake_model(tmp_path, "crashy", crash_after_tokens=2, endless=True),
        ]
        self.manager = ModelManager(
            FakeStore(records),  # type: ignore[arg-type]
            Settings(default_context_length=256, **settings),
            clock=self.clock,
            wall_clock=lambda: EPOCH + self.clock.now,
            starter=self.start,
            memory=lambda: self.free_memory,
            engine_of=lambda record: "fake",
        )

    async def start(self, spec: LoadSpec, on_exit: Any, on_progress: Any = None) -> WorkerHandle:
        self.starts += 1
        return await WorkerHandle.start(spec, on_exit=on_exit, on_progress=on_progress)

    async def tick(self, seconds: float) -> None:
        """Advance the clock and let the TTL reaper look."""
        self.clock.now += seconds
        self.manager.poke()
        for _ in range(20):
            await asyncio.sleep(0.01)

    def names(self) -> set[str]:
        return {i.identifier for i in self.manager.instances()}

    def instance(self, identifier: str) -> Instance:
        return next(i for i in self.manager.instances() if i.identifier == identifier)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    harness.manager.start()
    try:
        yield harness
    finally:
        await harness.manager.close()


async def test_ttl_starts_only_when_idle_and_restarts_with_each_request(h: Harness) -> None:
    inst = await h.manager.load("alpha", ttl=10)
    async with h.manager.lease("alpha"):
        await h.tick(60)
        assert "alpha" in h.names(), "a leased instance never expires"
    await h.tick(9)
    assert "alpha" in h.names()
    async with h.manager.lease("alpha"):
        pass  # restarts the timer
    await h.tick(9)
    assert "alpha" in h.names()
    await h.tick(2)
    await asyncio.wait_for(inst.gone.wait(), 5)
    assert h.names() == set()
    assert inst.state is State.UNLOADED


async def test_ps_counts_the_ttl_down_from_the_last_request(h: Harness) -> None:
    # What `lms ps` shows (ttlRemainingMs), on the same clock as the unloading above.
    inst = await h.manager.load("alpha", ttl=10)
    assert h.manager.ttl_remaining(inst) == 10
    await h.tick(4)
    assert h.manager.ttl_remaining(inst) == 6
    async with h.manager.lease("alpha"):
        await h.tick(30)
        assert h.manager.ttl_remaining(inst) == 10, "stopped while busy"
    assert h.manager.ttl_remaining(inst) == 10, "restarted by the request"
    await h.tick(7)
    assert h.manager.ttl_remaining(inst) == 3
    assert "alpha" in h.names()


async def test_last_used_time_is_on_the_manager_s_clock(h: Harness) -> None:
    inst = await h.manager.load("alpha")
    await h.tick(4)
    assert h.manager.last_used_epoch(inst) == EPOCH + h.clock.now - 4
    async with h.manager.lease("alpha"):
        await h.tick(30)
        assert h.manager.last_used_epoch(inst) == EPOCH + h.clock.now, "busy: used now"
    await h.tick(2)
    assert h.manager.last_used_epoch(inst) == EPOCH + h.clock.now - 2


async def test_manual_load_without_ttl_stays(h: Harness) -> None:
    await h.manager.load("alpha")
    await h.tick(10**6)
    assert h.names() == {"alpha"}


async def test_concurrent_first_requests_share_one_load(h: Harness) -> None:
    async def use() -> str:
        async with h.manager.lease("alpha") as inst:
            return inst.identifier

    assert await asyncio.gather(*(use() for _ in range(10))) == ["alpha"] * 10
    assert h.starts == 1
    assert h.names() == {"alpha"}
    assert h.manager.instances()[0].origin == "jit"
    assert h.manager.instances()[0].ttl == 3600


async def test_jit_auto_evict_spares_manual_and_drains_busy(h: Harness) -> None:
    await h.manager.load("beta")  # manual
    async with h.manager.lease("alpha") as lease:
        alpha = h.instance("alpha")
        assert alpha.origin == "jit"
        async with h.manager.lease("slow"):
            assert alpha.state is State.DRAINING, "busy: draining, not cut off"
            assert alpha.engine is lease.engine and isinstance(lease.engine, WorkerHandle)
            assert lease.engine.alive
            assert h.instance("slow").origin == "jit"
        await asyncio.sleep(0)
    await asyncio.wait_for(alpha.gone.wait(), 5)
    assert h.names() == {"beta", "slow"}


async def test_is_idempotent_and_rejects_conflicting_identifier(h: Harness) -> None:
    first = await h.manager.load("alpha", LoadRequest(context_length=128))
    assert await h.manager.load("alpha") is first
    assert await h.manager.load("alpha", LoadRequest(context_length=128)) is first
    with pytest.raises(InvalidRequest, match="different context_length"):
        await h.manager.load("alpha", LoadRequest(context_length=64))
    second = await h.manager.load("alpha", LoadRequest(context_length=64), identifier="two")
    assert second is not first and h.starts == 2


async def test_guardrail_refuses_with_both_numbers(h: Harness) -> None:
    h.free_memory = 1000
    with pytest.raises(InsufficientMemory) as info:
        await h.manager.load("alpha")
    assert info.value.available_bytes == 1000
    assert info.value.needed_bytes > 1000
    assert h.names() == set() and h.starts == 0
    await h.manager.load("alpha", force=True)
    assert h.names() == {"alpha"}


async def test_guardrail_evicts_idle_jit_instances_first(h: Harness) -> None:
    async with h.manager.lease("alpha"):
        pass
    alpha_bytes = h.manager.instances()[0].memory_bytes
    needed = (await h.manager.plan("beta", LoadRequest())).estimate.total_bytes
    # Not enough on its own (balanced: 90% of free memory), enough once alpha goes.
    h.free_memory = int((needed - alpha_bytes / 2) / 0.9)
    await h.manager.load("beta")
    assert h.names() == {"beta"}


async def test_jit_off_refuses_unloaded_models(tmp_path: Path) -> None:
    harness = Harness(tmp_path, jit_loading=False)
    with pytest.raises(ModelNotLoaded):
        async with harness.manager.lease("alpha"):
            pass
    await harness.manager.close()


async def test_worker_crash_fails_the_request_and_forgets_the_instance(h: Harness) -> None:
    request = ChatRequest([{"role": "user", "content": "go"}], params=GenerationParams())
    with pytest.raises(WorkerCrashed):
        async with h.manager.lease("crashy") as lease:
            inst = h.instance("crashy")
            async for _ in lease.engine.generate(request):
                pass
    await asyncio.sleep(0.05)
    assert h.names() == set()
    async with h.manager.lease("crashy"):
        again = h.instance("crashy")
        assert again is not inst and again.state is State.LOADED
    assert h.starts == 2
