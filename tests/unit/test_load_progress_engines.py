"""Load progress across the engine boundary: the fake engine reports it through the
worker protocol (a real worker process, and the in-process thread), and a cancelled
start stops the load and leaves nothing behind."""

import asyncio
import json
import threading
from pathlib import Path

import psutil
import pytest

from daemon.engines.base import LoadSpec
from daemon.engines.handle import start_engine
from daemon.engines.host import WorkerHandle
from daemon.engines.inprocess import ThreadHandle

NO_HANG = 60.0  # seconds: only so that a broken behaviour fails instead of hanging


def fake_model(folder: Path, **options: object) -> str:
    path = folder / "fake.json"
    path.write_text(json.dumps({"fake": True, **options}))
    return str(path)


@pytest.mark.parametrize("engine", ["worker", "thread"])
async def test_a_load_reports_its_progress_from_0_to_1_in_order(
    tmp_path: Path, engine: str
) -> None:
    seen: list[float] = []
    spec = LoadSpec(fake_model(tmp_path), "fake")
    start = WorkerHandle.start if engine == "worker" else ThreadHandle.start
    handle = await asyncio.wait_for(start(spec, on_progress=seen.append), NO_HANG)
    try:
        assert seen == [step / 10 for step in range(11)]
    finally:
        await handle.close()


async def test_cancelling_a_worker_load_kills_the_worker(tmp_path: Path) -> None:
    spec = LoadSpec(fake_model(tmp_path, load_delay=600), "fake")
    first = asyncio.Event()
    task = asyncio.create_task(WorkerHandle.start(spec, on_progress=lambda _: first.set()))
    await asyncio.wait_for(first.wait(), NO_HANG)  # the worker is loading
    workers = [
        p for p in psutil.Process().children() if "daemon.engines.worker" in " ".join(p.cmdline())
    ]
    assert len(workers) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE


async def test_cancelling_an_in_process_load_stops_its_thread(tmp_path: Path) -> None:
    spec = LoadSpec(fake_model(tmp_path, load_delay=600), "fake")
    first = asyncio.Event()
    before = set(threading.enumerate())
    task = asyncio.create_task(
        start_engine(spec, lambda *_: None, on_progress=lambda _: first.set())
    )
    await asyncio.wait_for(first.wait(), NO_HANG)
    (thread,) = set(threading.enumerate()) - before  # the engine's, loading
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, NO_HANG)
    # The 600 s load stopped when it was cancelled: the thread is gone, not sleeping on
    # (close() waits for it to end, and would give up only after ThreadHandle's wait).
    assert not thread.is_alive()
