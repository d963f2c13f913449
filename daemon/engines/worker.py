"""The model worker: `python -m daemon.engines.worker --fd N --parent-pid P`.

One worker holds one loaded model instance. It speaks protocol.py frames over the socket
it inherited as fd N. A reader thread takes frames off the socket (a cancel takes effect
at once: a running generation sees it before its next token, a queued one is dropped);
the main thread runs the slot scheduler: generations take free slots in arrival order
(the rest wait here), every active slot advances one token per step (one batched decode
for engines that can, see base.BatchingEngine; one generation at a time otherwise), and
quick requests (count_tokens, tokenize, render_chat) are served between two steps.

The worker never outlives the daemon: it exits when the socket closes, and on Linux the
kernel kills it when the daemon dies (PR_SET_PDEATHSIG). It ignores SIGINT: Ctrl-C goes
to the daemon, which shuts its workers down itself. Core dumps are off (a model's core
file can be tens of gigabytes).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import queue
import resource
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from daemon.engines.base import (
    BatchingEngine,
    DoneEvent,
    Engine,
    EngineInfo,
    LoadProgressCallback,
    LoadSpec,
    StreamEvent,
    prompt_input,
    request_from_dict,
)
from daemon.engines.protocol import (
    Message,
    Op,
    Reply,
    encode_frame,
    error_to_wire,
    read_frame,
)
from daemon.engines.runtime import load_engine_class
from daemon.engines.slots import IteratorSlots
from daemon.errors import EngineError, LmsError, LoadFailed, ProtocolError

log = logging.getLogger("daemon.engines.worker")

PR_SET_PDEATHSIG = 1
QUEUED = (Op.GENERATE.value, Op.EMBED.value)
PROGRESS_STEP = 0.01  # the least change of a load's progress worth a frame
ARRIVED = "_arrived"  # set on queued messages by the reader thread: time.perf_counter()


class Channel(Protocol):
    """Where the scheduler's replies go: the socket in a worker process (SocketChannel),
    the daemon's event loop for an engine run on a thread of the daemon (inprocess.py)."""

    def reply(self, rid: int, kind: Reply, **fields: object) -> None: ...

    def error(self, rid: int, exc: BaseException) -> None: ...

    def batched(self) -> contextlib.AbstractContextManager[None]:
        """Replies sent inside (by this thread) may go out together at its end."""
        ...


class SocketChannel:
    """The worker's end of the socket; sends from either thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._held = threading.local()  # a thread's frames inside batched()

    def send(self, message: Message) -> None:
        frame = encode_frame(message)
        held: list[bytes] | None = getattr(self._held, "frames", None)
        if held is not None:
            held.append(frame)
            return
        self._write(frame)

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """One write for a step's frames: the daemon wakes once for them, not once each
        (it reads them together, protocol.FrameBuffer)."""
        self._held.frames = []
        try:
            yield
        finally:
            frames, self._held.frames = self._held.frames, None
            if frames:
                self._write(b"".join(frames))

    def _write(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                os._exit(0)  # the daemon is gone: nobody is left to answer

    def reply(self, rid: int, kind: Reply, **fields: object) -> None:
        self.send({"type": kind.value, "id": rid, **fields})

    def error(self, rid: int, exc: BaseException) -> None:
        self.reply(rid, Reply.ERROR, error=error_to_wire(exc))


class Cancels:
    """Ids of queued or running generate/embed requests, and which of them are cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[int] = set()
        self._cancelled: set[int] = set()

    def register(self, rid: int) -> None:
        with self._lock:
            self._live.add(rid)

    def cancel(self, rid: int) -> None:
        with self._lock:
            if rid in self._live:
                self._cancelled.add(rid)

    def cancel_all(self) -> None:
        with self._lock:
            self._cancelled |= self._live

    def is_cancelled(self, rid: int) -> bool:
        with self._lock:
            return rid in self._cancelled

    def finish(self, rid: int) -> None:
        with self._lock:
            self._live.discard(rid)
            self._cancelled.discard(rid)


class WorkerServer:
    def __init__(self, channel: Channel, *, own_process: bool = False) -> None:
        self.channel = channel
        self.own_process = own_process  # a worker process: the spec's memory ceiling applies
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.cancels = Cancels()
        self.engine: Engine | None = None
        self.slots: BatchingEngine | None = None
        self.running: set[int] = set()  # ids of admitted generations not yet finished
        self.stopping = threading.Event()  # a shutdown is on its way to the main thread
        self.info: EngineInfo | None = None

    # -- any thread: what the daemon sends ------------------------------------------

    def route(self, message: Message) -> None:
        """Takes one message from the daemon (from any thread); a cancel takes effect at
        once, the rest waits for the main thread."""
        rid, kind = message["id"], message["type"]
        if kind == Op.CANCEL:
            self.cancels.cancel(rid)
        else:
            if kind in QUEUED:
                message[ARRIVED] = time.perf_counter()
                self.cancels.register(rid)
            elif kind == Op.LOAD:
                self.cancels.register(rid)  # a cancel (or a shutdown) aborts the load
            elif kind == Op.SHUTDOWN:
                self.stopping.set()
                self.cancels.cancel_all()
            self.inbox.put(message)

    # -- main thread --------------------------------------------------------------

    def run(self) -> int:
        pending: deque[Message] = deque()  # generate/embed waiting, in arrival order
        while True:
            busy = self.slots is not None and self.slots.active() > 0
            for message in self._take(block=not busy and not pending):
                kind = message["type"]
                if kind == Op.SHUTDOWN:
                    if self.slots is not None:
                        self.slots.abort_all()
                    self._close_engine()
                    return 0
                if kind in QUEUED:
                    pending.append(message)
                elif kind == Op.LOAD:
                    if not self._load(message):
                        return 1
                else:
                    self._quick(message)
            self._drop_cancelled(pending)
            self._admit(pending)
            if self.slots is not None and self.slots.active():
                self._step(self.slots)

    def _take(self, *, block: bool) -> list[Message]:
        taken: list[Message] = []
        try:
            taken.append(self.inbox.get(block=block))
            while True:
                taken.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return taken

    def _load(self, message: Message) -> bool:
        rid = message["id"]
        if self.engine is not None:
            self.channel.error(rid, EngineError("a model is already loaded"))
            return True
        try:
            spec = LoadSpec.from_dict(message["spec"])
            if self.own_process and spec.memory_limit_bytes:
                limit_memory(spec.memory_limit_bytes)
            engine = load_engine_class(spec.engine)()
            info = engine.load(spec, self._progress_reporter(rid))
        except LoadFailed as exc:
            self.channel.error(rid, exc)
            return False
        except MemoryError:
            self.channel.error(rid, LoadFailed("out of memory while loading the model"))
            return False
        except Exception as exc:  # an engine bug or a library failure: keep the traceback
            log.exception("load failed")
            self.channel.error(rid, LoadFailed(f"the engine failed: {type(exc).__name__}: {exc}"))
            return False
        finally:
            self.cancels.finish(rid)
        self.engine, self.info = engine, info
        if isinstance(engine, BatchingEngine):
            self.slots = engine
        else:
            self.slots = IteratorSlots(engine.generate)
        self.channel.reply(rid, Reply.RESULT, value=info.to_dict())
        return True

    def _progress_reporter(self, rid: int) -> LoadProgressCallback:
        """Sends a load's progress to the daemon, at most once per percent (llama.cpp
        reports every tensor), and tells the engine to stop once the load is cancelled."""
        sent = -1.0

        def report(progress: float) -> bool:
            nonlocal sent
            value = min(1.0, max(0.0, float(progress)))
            if value - sent >= PROGRESS_STEP or (value >= 1.0 > sent):
                sent = value
                self.channel.reply(rid, Reply.PROGRESS, value=value)
            return not self.cancels.is_cancelled(rid)

        return report

    def _loaded(self) -> Engine:
        if self.engine is None:
            raise EngineError("no model is loaded")
        return self.engine

    def _quick(self, message: Message) -> None:
        rid, kind = message["id"], message["type"]
        try:
            if kind == Op.COUNT_TOKENS:
                value: object = self._loaded().count_tokens(str(message["text"]))
            elif kind == Op.TOKENIZE:
                value = self._loaded().tokenize(str(message["text"]))
            elif kind == Op.RENDER_CHAT:
                value = self._loaded().render_chat(
                    message["messages"],
                    message.get("tools"),
                    bool(message.get("add_generation_prompt", True)),
                )
            else:
                raise ProtocolError(f"unknown request type {kind!r}")
        except Exception as exc:
            self.channel.error(rid, exc)
        else:
            self.channel.reply(rid, Reply.RESULT, value=value)

    def _drop_cancelled(self, pending: deque[Message]) -> None:
        """A queued request the daemon gave up on leaves the queue without an answer
        (the host stopped listening when it sent the cancel)."""
        for message in [m for m in pending if self.cancels.is_cancelled(m["id"])]:
            pending.remove(message)
            self.cancels.finish(message["id"])

    def _admit(self, pending: deque[Message]) -> None:
        """Starts queued requests, in arrival order, while slots are free."""
        while pending:
            head = pending[0]
            slots = self.slots
            if slots is None:  # nothing is loaded: nothing can run
                pending.popleft()
                self._fail(head["id"], EngineError("no model is loaded"))
                continue
            if head["type"] == Op.EMBED:
                # An embedding instance embeds in the context its generations use: wait.
                if self.info is not None and self.info.embedding and slots.active():
                    return
                pending.popleft()
                self._embed(head)
                continue
            if not slots.free_slots():
                return
            pending.popleft()
            rid = head["id"]
            try:
                request = request_from_dict(head["request"])
                slots.admit(rid, request, self._cancelled_check(rid), head[ARRIVED])
            except Exception as exc:
                self._fail(rid, exc)
            else:
                self.running.add(rid)

    def _cancelled_check(self, rid: int) -> Callable[[], bool]:
        return lambda: self.cancels.is_cancelled(rid)

    def _embed(self, message: Message) -> None:
        rid = message["id"]
        try:
            result = self._loaded().embed([prompt_input(t) for t in message["texts"]])
        except Exception as exc:
            self._fail(rid, exc)
            return
        self.channel.reply(rid, Reply.RESULT, value=result.to_dict())
        self.cancels.finish(rid)

    def _step(self, slots: BatchingEngine) -> None:
        try:
            outputs = slots.step()
        except Exception as exc:  # the engine cannot go on with any of them
            log.exception("a generation step failed")
            slots.abort_all()
            for rid in list(self.running):
                self._fail(rid, EngineError(f"the engine failed: {type(exc).__name__}: {exc}"))
            return
        if self.stopping.is_set():  # the daemon is closing us: it fails what is in flight
            return
        with self.channel.batched():
            for rid, item in outputs:
                self._send(rid, item)

    def _send(self, rid: int, item: StreamEvent | Exception) -> None:
        if isinstance(item, Exception):
            self._fail(rid, item)
        elif isinstance(item, DoneEvent):
            self.channel.reply(rid, Reply.DONE, event=item.to_dict())
            self.cancels.finish(rid)
            self.running.discard(rid)
        else:
            self.channel.reply(rid, Reply.TOKEN, event=item.to_dict())

    def _fail(self, rid: int, exc: Exception) -> None:
        if not isinstance(exc, LmsError):  # a bug or a library failure: keep the traceback
            log.warning("request %d failed", rid, exc_info=exc)
        self.channel.error(rid, exc)
        self.cancels.finish(rid)
        self.running.discard(rid)

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def read_loop(server: WorkerServer, sock: socket.socket) -> None:
    try:
        while (message := read_frame(sock)) is not None:
            server.route(message)
    except (ProtocolError, OSError) as exc:
        log.error("bad frame from the daemon, exiting: %s", exc)
    # The daemon closed our socket (or died): nobody is left to serve. The kernel
    # gives every byte of the model's memory back; there is nothing to save.
    os._exit(0)


def limit_memory(limit_bytes: int) -> None:
    """The worker's memory ceiling: RLIMIT_DATA, which on Linux counts private writable
    memory (the heap, anonymous mappings, thread stacks) but not file-backed mappings
    such as mmap'ed weights. Past it an allocation fails: Python raises MemoryError (the
    request, or the load, fails with "out of memory"), a native library may abort (the
    daemon reports the crash); either way this process alone, not the machine."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    except (ValueError, OSError) as exc:  # not supported here: run without a ceiling
        log.warning("cannot set the worker's memory ceiling: %s", exc)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the daemon dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the daemon died before prctl took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.engines.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    sock = socket.socket(fileno=args.fd)
    server = WorkerServer(SocketChannel(sock), own_process=True)
    threading.Thread(
        target=read_loop, args=(server, sock), daemon=True, name="worker-reader"
    ).start()
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
