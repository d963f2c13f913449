"""An engine run inside the daemon's process, on a thread of its own: the fake engine,
so that a test (or `lmsd --engine fake`) runs the whole daemon, every route included, in
one process and in milliseconds.

It runs the very scheduler a worker process runs (worker.py's `WorkerServer`: slots,
queueing, cancellation, quick requests between steps) and speaks the same messages, only
handed over in memory instead of framed over a socket. What it cannot give is a worker's
isolation: a native crash here would take the daemon with it, which is why only engines
that cannot crash that way (the fake) are run like this. The fake's simulated crash
(`crash_after_tokens`) ends the thread instead of the process, and the daemon sees it as
it sees a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading

from daemon.engines.base import LoadSpec
from daemon.engines.client import EngineClient, OnExit, OnProgress, State
from daemon.engines.protocol import Message, Op, Reply, error_to_wire
from daemon.engines.worker import WorkerServer
from daemon.errors import LmsError, LoadFailed

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0


class LoopChannel:
    """Replies from the scheduler thread, delivered on the daemon's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handle: ThreadHandle) -> None:
        self._loop = loop
        self._handle = handle

    def reply(self, rid: int, kind: Reply, **fields: object) -> None:
        message: Message = {"type": kind.value, "id": rid, **fields}
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._handle._dispatch, message)

    def error(self, rid: int, exc: BaseException) -> None:
        self.reply(rid, Reply.ERROR, error=error_to_wire(exc))

    def batched(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # each reply is its own callback on the loop


class ThreadHandle(EngineClient):
    """One model instance whose scheduler runs on a thread of the daemon."""

    def __init__(self, spec: LoadSpec, on_exit: OnExit | None) -> None:
        super().__init__(spec, on_exit)
        self._loop = asyncio.get_running_loop()
        self._server = WorkerServer(LoopChannel(self._loop, self))
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine-{spec.engine}", daemon=True)

    @classmethod
    async def start(
        cls,
        spec: LoadSpec,
        *,
        on_exit: OnExit | None = None,
        on_progress: OnProgress | None = None,
    ) -> ThreadHandle:
        """Starts the scheduler thread and loads the model in it; returns once loaded.
        Raises LoadFailed (and leaves no thread behind) when it cannot be loaded;
        cancelled, it stops the load and the thread."""
        handle = cls(dataclasses.replace(spec, in_process=True), on_exit)
        handle._thread.start()
        try:
            await handle._load(handle.spec, on_progress)
        except BaseException as exc:
            await handle.close()
            if isinstance(exc, LmsError) and not isinstance(exc, LoadFailed):
                raise LoadFailed(f"cannot load {spec.model_path}: {exc}") from exc
            raise
        handle._state = State.READY
        log.info("loaded %s in process (%s)", spec.model_path, handle.info.runtime_name)
        return handle

    def _run(self) -> None:
        """The scheduler thread: runs until a shutdown, a failed load, or a crash."""
        try:
            code = self._server.run()
            reason = "stopped without being asked to" if code == 0 else "its model failed to load"
        except BaseException as exc:  # the engine's simulated crash, or a scheduler bug
            if not isinstance(exc, Exception):
                log.debug("engine thread ended by %s", type(exc).__name__)
            reason = f"crashed: {type(exc).__name__}: {exc}"
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is gone
            self._loop.call_soon_threadsafe(self._thread_ended, reason)

    def _thread_ended(self, reason: str) -> None:
        if self._state is not State.EXITED and self._ended(reason):
            log.warning("in-process engine for %s ended: %s", self.spec.model_path, reason)
        self._stopped.set()

    @property
    def pid(self) -> int | None:
        return None

    async def _post(self, message: Message) -> None:
        self._check_usable()
        self._server.route(message)

    def _post_nowait(self, message: Message) -> None:
        if self._state is not State.EXITED:
            self._server.route(message)

    async def close(self) -> None:
        """Asks the scheduler to stop and waits for its thread; requests still in flight
        fail with ModelUnloaded. Safe to call any number of times, also after a crash."""
        if self._state is not State.EXITED:
            self._state = State.CLOSING
            self._post_nowait({"type": Op.SHUTDOWN.value, "id": 0})
        if not self._thread.is_alive() and not self._stopped.is_set():
            self._thread_ended("never started")
        try:
            await asyncio.wait_for(self._stopped.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            # A thread cannot be killed; it is a daemon thread and holds nothing we need.
            log.warning("in-process engine for %s did not stop in time", self.spec.model_path)
            return
        self._thread.join(CLOSE_WAIT_S)  # it said it is done: this returns at once
