"""A worker's memory ceiling (LoadSpec.memory_limit_bytes, RLIMIT_DATA): the real worker
process with the fake engine, whose `memory_mb` option allocates that much at load."""

import json
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.engines.base import ChatRequest, DoneEvent, LoadSpec
from daemon.engines.host import WorkerHandle
from daemon.errors import LoadFailed
from daemon.manager import worker_memory_ceiling

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_DATA is enforced on Linux"
)

MIB = 1024 * 1024
CEILING = 256 * MIB  # well above an idle worker (~30 MB of private memory)


def fake_model(tmp_path: Path, name: str, **options: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"fake": True, **options}))
    return str(path)


def workers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "daemon.engines.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.fixture
async def started() -> AsyncIterator[list[WorkerHandle]]:
    handles: list[WorkerHandle] = []
    yield handles
    for handle in handles:
        await handle.close(timeout=2)
    leftovers = workers()
    for proc in leftovers:
        proc.kill()
    assert not leftovers


def data_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            return line.split()[3]
    raise AssertionError("no 'Max data size' line")


async def test_a_worker_over_its_ceiling_fails_alone_with_a_clear_error(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    greedy = fake_model(tmp_path, "greedy.json", memory_mb=512)
    with pytest.raises(LoadFailed, match="out of memory"):
        await WorkerHandle.start(LoadSpec(greedy, "fake", memory_limit_bytes=CEILING))
    assert workers() == [], "the failed worker is gone"
    # This process (the daemon's side) lives on and starts the next worker normally,
    # under the same ceiling, and it serves.
    modest = fake_model(tmp_path, "modest.json", memory_mb=64)
    handle = await WorkerHandle.start(LoadSpec(modest, "fake", memory_limit_bytes=CEILING))
    started.append(handle)
    assert data_limit(handle.pid) == str(CEILING)
    events = [e async for e in handle.generate(ChatRequest([{"role": "user", "content": "hi"}]))]
    assert isinstance(events[-1], DoneEvent)


async def test_without_a_ceiling_the_same_load_works(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    greedy = fake_model(tmp_path, "greedy.json", memory_mb=320)
    handle = await WorkerHandle.start(LoadSpec(greedy, "fake"))
    started.append(handle)
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    assert data_limit(handle.pid) == ("unlimited" if soft == resource.RLIM_INFINITY else str(soft))


def test_the_ceiling_is_the_estimate_with_a_generous_margin() -> None:
    gib = 1024 * MIB
    assert worker_memory_ceiling(100 * MIB) == 100 * MIB + gib
    assert worker_memory_ceiling(8 * gib) == 16 * gib
