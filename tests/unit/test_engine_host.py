"""The real worker process, driven through WorkerHandle, with the fake engine."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    LoadSpec,
    StopReason,
    TokenEvent,
)
from daemon.engines.client import State
from daemon.engines.host import WorkerHandle
from daemon.engines.protocol import encode_frame, read_frame
from daemon.errors import (
    ContextOverflow,
    CrashedWhileLoading,
    LoadFailed,
    ModelUnloaded,
    WorkerCrashed,
)

NO_HANG = 60.0  # seconds: only so that a broken behaviour fails instead of hanging


def workers_of_this_test() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "daemon.engines.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_worker_survives() -> Iterator[None]:
    """Whatever a test does (or fails to do), no worker outlives it."""
    yield
    leftovers = workers_of_this_test()
    for proc in leftovers:
        proc.kill()
    psutil.wait_procs(leftovers, timeout=5)
    assert not leftovers, f"workers left running: {[p.pid for p in leftovers]}"


def fake_model(tmp_path: Path, *, name: str = "fake.json", **options: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"fake": True, **options}))
    return str(path)


def reaped(pid: int) -> bool:
    """Gone, and not left as a zombie of ours."""
    with contextlib.suppress(ChildProcessError):  # not (or no longer) our child: fine
        os.waitpid(pid, os.WNOHANG)
    return not psutil.pid_exists(pid)


class Exits:
    """Records on_exit calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[WorkerHandle, str]] = []

    def __call__(self, handle: WorkerHandle, reason: str) -> None:
        self.calls.append((handle, reason))


@pytest.fixture
async def started() -> AsyncIterator[list[WorkerHandle]]:
    handles: list[WorkerHandle] = []
    yield handles
    for handle in handles:
        await handle.close(timeout=2)


@pytest.fixture
def exits() -> Exits:
    return Exits()


async def start(
    handles: list[WorkerHandle], path: str, exits: Exits | None = None, **spec: object
) -> WorkerHandle:
    handle = await WorkerHandle.start(LoadSpec(path, "fake", **spec), on_exit=exits)  # type: ignore[arg-type]
    handles.append(handle)
    return handle


async def collect(
    handle: WorkerHandle, request: ChatRequest | CompletionRequest
) -> tuple[str, DoneEvent]:
    text = ""
    async for event in handle.generate(request):
        if isinstance(event, DoneEvent):
            return text, event
        text += event.text
    raise AssertionError("no DoneEvent")


async def test_load_and_stream(tmp_path: Path, started: list[WorkerHandle]) -> None:
    handle = await start(started, fake_model(tmp_path, context_length=512))
    assert handle.pid != os.getpid() and psutil.pid_exists(handle.pid)
    assert handle.state is State.READY
    assert (handle.info.runtime_name, handle.info.context_length) == ("fake", 512)
    assert await handle.count_tokens("one two three") == 3  # a quick request
    chat = ChatRequest([{"role": "user", "content": "hello from the test"}])
    events = [e async for e in handle.generate(chat)]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == [
        "hello ",
        "from ",
        "the ",
        "test",
    ]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.stop_reason is StopReason.EOS
    assert done.completion_tokens == 4


async def test_one_shot_requests(tmp_path: Path, started: list[WorkerHandle]) -> None:
    handle = await start(started, fake_model(tmp_path, embedding_dim=4))
    assert await handle.count_tokens("one two three") == 3
    prompt = await handle.render_chat([{"role": "user", "content": "hi"}], tools=[{"name": "f"}])
    assert (
        "<|user|>\nhi" in prompt and '"name": "f"' in prompt and prompt.endswith("<|assistant|>\n")
    )
    result = await handle.embed(["a", "b"])
    assert len(result.vectors) == 2 and all(len(v) == 4 for v in result.vectors)


async def test_two_requests_in_flight(tmp_path: Path, started: list[WorkerHandle]) -> None:
    handle = await start(started, fake_model(tmp_path, token_delay=0.01))
    first = CompletionRequest("alpha beta gamma delta")
    second = CompletionRequest("one two three four")
    (text1, done1), (text2, done2) = await asyncio.gather(
        collect(handle, first), collect(handle, second)
    )
    assert (text1, text2) == ("alpha beta gamma delta", "one two three four")
    assert done1.completion_tokens == done2.completion_tokens == 4


async def test_quick_requests_are_answered_between_tokens(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, fake_model(tmp_path, token_delay=0.05, endless=True))
    stream = handle.generate(CompletionRequest("on and on"))
    await anext(stream)
    # The generation never ends: a quick request that waited for it would never be answered.
    assert await asyncio.wait_for(handle.count_tokens("a b"), NO_HANG) == 2
    await anext(stream)  # the generation carries on
    await stream.aclose()


async def test_aclose_cancels_the_generation_at_once(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    # 4096-token context at 50 ms a token: without a working cancel, the worker would
    # stay busy for minutes and the next request would wait behind it.
    handle = await start(started, fake_model(tmp_path, token_delay=0.05, endless=True))
    stream = handle.generate(CompletionRequest("on and on"))
    for _ in range(3):
        await anext(stream)
    await asyncio.wait_for(stream.aclose(), NO_HANG)  # does not wait for the generation
    next_one = CompletionRequest("next please", GenerationParams(max_tokens=2))
    text, done = await asyncio.wait_for(collect(handle, next_one), NO_HANG)
    assert text == "next please " and done.stop_reason is StopReason.MAX_TOKENS


async def test_a_prompt_over_the_context_fails_typed_and_the_worker_lives_on(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, fake_model(tmp_path, context_length=8))
    with pytest.raises(ContextOverflow) as caught:
        await collect(handle, CompletionRequest("a b c d e f g h i j"))
    assert (caught.value.prompt_tokens, caught.value.context_length) == (10, 8)
    assert (await collect(handle, CompletionRequest("still here")))[0] == "still here"


async def test_kill_9_mid_stream(tmp_path: Path, started: list[WorkerHandle], exits: Exits) -> None:
    handle = await start(started, fake_model(tmp_path, token_delay=0.05, endless=True), exits)
    pid = handle.pid
    stream = handle.generate(CompletionRequest("on and on"))
    await anext(stream)
    waiting = asyncio.ensure_future(handle.count_tokens("x"))  # a one-shot in flight too
    os.kill(pid, signal.SIGKILL)

    async def to_the_end() -> None:  # the stream is endless: only the crash can end it
        while True:
            await anext(stream)

    with pytest.raises(WorkerCrashed) as caught:
        await asyncio.wait_for(to_the_end(), NO_HANG)
    assert str(caught.value) == f"the model worker (pid {pid}) died: killed by signal SIGKILL"
    with pytest.raises(WorkerCrashed):
        await waiting  # not even sent when the kill landed
    assert exits.calls == [(handle, "killed by signal SIGKILL")]
    assert handle.state is State.EXITED and handle.exit_reason == "killed by signal SIGKILL"
    assert reaped(pid)
    with pytest.raises(WorkerCrashed):
        await handle.count_tokens("x")
    await handle.close()
    assert len(exits.calls) == 1


async def test_an_abort_in_the_engine_is_reported(
    tmp_path: Path, started: list[WorkerHandle], exits: Exits
) -> None:
    handle = await start(started, fake_model(tmp_path, crash_after_tokens=2, endless=True), exits)
    tokens = 0
    with pytest.raises(WorkerCrashed, match="SIGABRT"):
        async for _ in handle.generate(CompletionRequest("x y z")):
            tokens += 1
    assert tokens == 2
    assert [reason for _, reason in exits.calls] == ["killed by signal SIGABRT"]
    assert reaped(handle.pid)


async def test_close_is_idempotent_and_leaves_no_process(
    tmp_path: Path, started: list[WorkerHandle], exits: Exits, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await start(started, fake_model(tmp_path, token_delay=0.05, endless=True), exits)
    pid = handle.pid
    stream = handle.generate(CompletionRequest("on and on"))
    await anext(stream)
    await asyncio.gather(handle.close(), handle.close())
    assert "terminating it" not in caplog.text, "asked nicely, and it went"
    await handle.close()
    assert reaped(pid) and handle.state is State.EXITED
    assert handle.memory_bytes() == 0
    with pytest.raises(ModelUnloaded):
        while True:
            await anext(stream)
    with pytest.raises(ModelUnloaded):
        await handle.count_tokens("x")
    assert exits.calls == []  # we asked it to go: not a crash


async def test_a_stuck_worker_is_killed_on_close(
    tmp_path: Path, started: list[WorkerHandle]
) -> None:
    handle = await start(started, fake_model(tmp_path))
    os.kill(handle.pid, signal.SIGSTOP)  # deaf to the shutdown message, and to SIGTERM
    await asyncio.wait_for(handle.close(timeout=0.3, term_grace=0.3), NO_HANG)
    assert reaped(handle.pid)


async def test_the_worker_ignores_sigint(tmp_path: Path, started: list[WorkerHandle]) -> None:
    handle = await start(started, fake_model(tmp_path))
    os.kill(handle.pid, signal.SIGINT)
    await asyncio.sleep(0.2)
    assert await handle.count_tokens("still alive") == 2


async def test_rss_is_the_worker_s_memory(tmp_path: Path, started: list[WorkerHandle]) -> None:
    small = await start(started, fake_model(tmp_path, name="small.json"))
    big = await start(started, fake_model(tmp_path, name="big.json", memory_mb=96))
    assert big.memory_bytes() - small.memory_bytes() > 80 * 1024 * 1024
    pid = big.pid
    await big.close()
    assert big.memory_bytes() == 0 and reaped(pid)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, "model file not found"),
        ({"fail_load": "weights are corrupt"}, "weights are corrupt"),
        ({"no_such_option": 1}, "unknown fake model options"),
    ],
)
async def test_load_failure_leaves_no_process(
    tmp_path: Path, options: dict[str, Any] | None, expected: str
) -> None:
    path = str(tmp_path / "missing.json") if options is None else fake_model(tmp_path, **options)
    with pytest.raises(LoadFailed, match=expected):
        await WorkerHandle.start(LoadSpec(path, "fake"))
    assert workers_of_this_test() == []


async def test_unknown_engine_is_a_load_failure(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="unknown engine 'nope'"):
        await WorkerHandle.start(LoadSpec(fake_model(tmp_path), "nope"))
    assert workers_of_this_test() == []


async def test_a_worker_killed_while_loading_is_a_load_failure(tmp_path: Path) -> None:
    loading = asyncio.ensure_future(
        WorkerHandle.start(LoadSpec(fake_model(tmp_path, load_delay=30), "fake"))
    )
    deadline = time.monotonic() + 10
    while not workers_of_this_test() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    (worker,) = workers_of_this_test()
    worker.kill()
    with pytest.raises(CrashedWhileLoading, match=r"died while loading .*SIGKILL"):
        await asyncio.wait_for(loading, NO_HANG)  # a LoadFailed that HTTP answers with 502
    assert reaped(worker.pid)


async def test_a_cancelled_load_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            WorkerHandle.start(LoadSpec(fake_model(tmp_path, load_delay=30), "fake")), 1.0
        )
    assert workers_of_this_test() == []


# -- the worker on its own, without the host ------------------------------------------


def spawn_worker(fd: int, parent_pid: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.engines.worker",
            "--fd",
            str(fd),
            "--parent-pid",
            str(parent_pid),
        ],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
    )


def test_the_worker_exits_when_its_socket_closes(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    proc = spawn_worker(theirs.fileno(), os.getpid())
    theirs.close()
    try:
        ours.sendall(
            encode_frame(
                {"type": "load", "id": 1, "spec": LoadSpec(fake_model(tmp_path), "fake").to_dict()}
            )
        )
        reply = read_frame(ours)
        progress = []
        while reply is not None and reply["type"] == "progress":  # the load's, then its result
            progress.append(reply["value"])
            reply = read_frame(ours)
        assert reply is not None and reply["type"] == "result"
        assert progress[0] == 0.0 and progress[-1] == 1.0
        ours.close()  # the daemon "dies"
        assert proc.wait(timeout=NO_HANG) == 0
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "garbage",
    [struct.pack(">I", 1 << 31), struct.pack(">I", 5) + b"nope!", struct.pack(">I", 2) + b"[]"],
)
def test_the_worker_exits_on_a_garbage_frame(garbage: bytes) -> None:
    ours, theirs = socket.socketpair()
    proc = spawn_worker(theirs.fileno(), os.getpid())
    theirs.close()
    try:
        ours.sendall(garbage)
        assert proc.wait(timeout=NO_HANG) == 0
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_worker_dies_with_its_parent_even_with_the_socket_open() -> None:
    # The socket stays open in this test process, so only PR_SET_PDEATHSIG can end it.
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'daemon.engines.worker', '--fd', '{fd}',"
        f" '--parent-pid', str(os.getpid())], pass_fds=({fd},), stdin=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], pass_fds=(fd,), stdout=subprocess.PIPE
    )
    theirs.close()
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        # It is up and serving: a quick request with no model loaded is answered.
        ours.sendall(encode_frame({"type": "count_tokens", "id": 1, "text": "x"}))
        assert read_frame(ours) == {
            "type": "error",
            "id": 1,
            "error": {"kind": "engine_error", "message": "no model is loaded"},
        }
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + NO_HANG
        while time.monotonic() < deadline:
            try:
                if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the worker outlived its parent")
    finally:
        ours.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
        if worker_pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(worker_pid).kill()
