"""The manager's side of a load: its progress reaches whoever follows it, a load nobody
waits for any more is abandoned (its engine stops), and a model's per-model defaults are
where every load of it starts. The fake engine runs in process (ThreadHandle)."""

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.catalog import ModelRecord
from daemon.config import Settings
from daemon.engines.handle import start_engine
from daemon.errors import LoadFailed
from daemon.instance import Instance, LoadRequest, State
from daemon.load_progress import LoadProgress
from daemon.manager import ModelManager
from tests.unit.test_manager import Clock, FakeStore, fake_model

NO_HANG = 60.0  # seconds: only so that a broken behaviour fails instead of hanging


class Defaults:
    """Per-model defaults as the manager asks for them, by model key."""

    def __init__(self) -> None:
        self.by_key: dict[str, tuple[LoadRequest, float | None]] = {}

    def __call__(self, record: ModelRecord) -> tuple[LoadRequest, float | None]:
        return self.by_key.get(record.key, (LoadRequest(), None))


@pytest.fixture
async def defaults() -> Defaults:
    return Defaults()


@pytest.fixture
async def manager(tmp_path: Path, defaults: Defaults) -> AsyncIterator[ModelManager]:
    records = [
        fake_model(tmp_path, "alpha"),
        fake_model(tmp_path, "quick", load_delay=0.05),
        fake_model(tmp_path, "glacial", load_delay=600),
    ]
    manager = ModelManager(
        FakeStore(records),  # type: ignore[arg-type]
        Settings(default_context_length=256),
        clock=Clock(),
        starter=start_engine,
        memory=lambda: 64 * 1024**3,
        engine_of=lambda record: "fake",
        defaults_of=defaults,
    )
    manager.start()
    try:
        yield manager
    finally:
        await manager.close()


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("engine-")}


async def test_a_follower_hears_every_new_value_of_a_burst_in_order() -> None:
    progress = LoadProgress()
    heard: list[float] = []

    async def follow() -> None:
        async for value in progress.follow():
            heard.append(value)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)  # following, before the engine reports
    for value in (0.0, 0.2, 0.2, 0.1, 0.5, 1.0):  # all at once, as a small model loads
        progress.update(value)
    progress.finish()
    await asyncio.wait_for(task, NO_HANG)
    assert heard == [0.0, 0.2, 0.5, 1.0], "never a repeat, never going back"


async def test_the_caller_hears_the_progress_from_0_to_1_in_order(manager: ModelManager) -> None:
    heard: list[tuple[Instance, float]] = []
    inst = await manager.load("quick", on_progress=lambda i, v: heard.append((i, v)))
    values = [value for _, value in heard]
    assert {i for i, _ in heard} == {inst}
    assert values[0] == 0.0 and values[-1] == 1.0
    assert values == sorted(values) and len(values) > 2  # the steps between, in order
    assert inst.progress.value == 1.0 and inst.progress.done


async def test_an_instance_already_loaded_reports_1_at_once(manager: ModelManager) -> None:
    await manager.load("alpha")
    heard: list[float] = []
    await manager.load("alpha", on_progress=lambda _, v: heard.append(v))
    assert heard == [1.0]


async def test_every_follower_of_one_load_hears_it(manager: ModelManager) -> None:
    first: list[float] = []
    second: list[float] = []
    a, b = await asyncio.gather(
        manager.load("quick", on_progress=lambda _, v: first.append(v)),
        manager.load("quick", on_progress=lambda _, v: second.append(v)),
    )
    assert a is b
    assert first[-1] == second[-1] == 1.0


async def _loading(manager: ModelManager, name: str) -> tuple["asyncio.Task[Instance]", Instance]:
    """A load of `name` started in a task, once its engine reports progress."""
    started: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()

    def heard(inst: Instance, value: float) -> None:
        if not started.done():
            started.set_result(inst)

    task = asyncio.create_task(manager.load(name, on_progress=heard))
    return task, await asyncio.wait_for(started, NO_HANG)


async def test_a_cancelled_load_nobody_else_waits_for_is_abandoned(
    manager: ModelManager,
) -> None:
    before = engine_threads()
    task, inst = await _loading(manager, "glacial")
    (thread,) = engine_threads() - before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(inst.gone.wait(), NO_HANG)
    assert inst.state is State.UNLOADED and manager.instances() == []
    with pytest.raises(LoadFailed, match="cancelled"):
        await inst.loaded
    # The 600 s load stopped: the engine's thread ended (it would sleep on otherwise).
    await asyncio.wait_for(asyncio.to_thread(thread.join, NO_HANG), NO_HANG + 1)
    assert not thread.is_alive()


async def test_a_load_someone_else_waits_for_goes_on(manager: ModelManager) -> None:
    task, inst = await _loading(manager, "quick")
    other = asyncio.create_task(manager.load("quick"))
    await asyncio.sleep(0)  # the second caller is waiting too
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(other, NO_HANG) is inst
    assert inst.state is State.LOADED


async def test_a_load_a_request_waits_for_goes_on(manager: ModelManager) -> None:
    task, inst = await _loading(manager, "quick")

    async def request() -> str:
        async with manager.lease("quick") as lease:
            return lease.identifier

    waiting = asyncio.create_task(request())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(waiting, NO_HANG) == inst.identifier


async def test_unloading_a_loading_instance_stops_its_engine(manager: ModelManager) -> None:
    before = engine_threads()
    task, inst = await _loading(manager, "glacial")
    (thread,) = engine_threads() - before
    await manager.unload(inst.identifier)
    with pytest.raises(LoadFailed):
        await asyncio.wait_for(task, NO_HANG)
    await asyncio.wait_for(asyncio.to_thread(thread.join, NO_HANG), NO_HANG + 1)
    assert not thread.is_alive()


# -- per-model defaults -------------------------------------------------------------------


async def test_a_manual_load_starts_from_the_model_s_defaults(
    manager: ModelManager, defaults: Defaults
) -> None:
    defaults.by_key["alpha"] = (LoadRequest(context_length=128, parallel=2), 42.0)
    inst = await manager.load("alpha")
    assert (inst.config.context_length, inst.config.parallel, inst.ttl) == (128, 2, 42.0)
    assert inst.engine is not None and inst.engine.info.context_length == 128


async def test_fields_given_with_the_load_win_over_the_defaults(
    manager: ModelManager, defaults: Defaults
) -> None:
    defaults.by_key["alpha"] = (LoadRequest(context_length=128, parallel=2), 42.0)
    inst = await manager.load("alpha", LoadRequest(context_length=64), ttl=7.0)
    assert (inst.config.context_length, inst.config.parallel, inst.ttl) == (64, 2, 7.0)
    never = await manager.load("alpha", identifier="forever", ttl=float("inf"))
    assert never.ttl is None, "an explicit 'never' beats the default TTL"


async def test_a_jit_load_starts_from_the_defaults_too(
    manager: ModelManager, defaults: Defaults
) -> None:
    defaults.by_key["alpha"] = (LoadRequest(context_length=128, parallel=3), 42.0)
    async with manager.lease("alpha") as lease:
        assert (lease.config.context_length, lease.config.parallel) == (128, 3)
    (inst,) = manager.instances()
    assert inst.origin == "jit" and inst.ttl == 42.0, "the model's TTL, not jit_ttl"
    async with manager.lease("alpha", request=LoadRequest(context_length=128)):
        pass  # what a request asks for still wins (and here matches)


async def test_without_defaults_a_jit_load_takes_the_jit_ttl(manager: ModelManager) -> None:
    async with manager.lease("alpha"):
        pass
    assert manager.instances()[0].ttl == manager.settings.jit_ttl


async def test_the_estimate_starts_from_the_defaults(
    manager: ModelManager, defaults: Defaults
) -> None:
    defaults.by_key["alpha"] = (LoadRequest(context_length=128), None)
    assert (await manager.plan("alpha", LoadRequest())).config.context_length == 128
    assert (await manager.plan("alpha", LoadRequest(context_length=64))).config.context_length == 64


async def test_a_loaded_instance_is_reused_whatever_the_defaults_say_now(
    manager: ModelManager, defaults: Defaults
) -> None:
    first = await manager.load("alpha")
    defaults.by_key["alpha"] = (LoadRequest(context_length=128), None)
    assert await manager.load("alpha") is first, "defaults never conflict with a loaded one"
