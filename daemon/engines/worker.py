"""The model worker: `python -m daemon.engines.worker --fd N --parent-pid P`.

One worker holds one loaded model instance. It speaks protocol.py frames over the socket
it inherited as fd N. A reader thread takes frames off the socket (a cancel takes effect
at once: the running generation sees it before its next token); the main thread runs the
engine: one generation or embedding at a time, in arrival order, with quick requests
(count_tokens, render_chat) served between two tokens of a running generation.

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
from collections import deque
from collections.abc import Iterator

from daemon.engines.base import (
    DoneEvent,
    Engine,
    EngineInfo,
    LoadSpec,
    StreamEvent,
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
from daemon.errors import EngineError, LmsError, LoadFailed, ProtocolError

log = logging.getLogger("daemon.engines.worker")

PR_SET_PDEATHSIG = 1
QUEUED = (Op.GENERATE.value, Op.EMBED.value)


class Channel:
    """The worker's end of the socket; sends from either thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        frame = encode_frame(message)
        with self._lock:
            try:
                self.sock.sendall(frame)
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
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.cancels = Cancels()
        self.engine: Engine | None = None
        self.info: EngineInfo | None = None

    # -- reader thread ------------------------------------------------------------

    def read_loop(self) -> None:
        try:
            while (message := read_frame(self.channel.sock)) is not None:
                self._route(message)
        except (ProtocolError, OSError) as exc:
            log.error("bad frame from the daemon, exiting: %s", exc)
        # The daemon closed our socket (or died): nobody is left to serve. The kernel
        # gives every byte of the model's memory back; there is nothing to save.
        os._exit(0)

    def _route(self, message: Message) -> None:
        rid, kind = message["id"], message["type"]
        if kind == Op.CANCEL:
            self.cancels.cancel(rid)
        elif kind == Op.INFO:
            if self.info is None:
                self.channel.error(rid, EngineError("no model is loaded yet"))
            else:
                self.channel.reply(rid, Reply.RESULT, value=self.info.to_dict())
        else:
            if kind in QUEUED:
                self.cancels.register(rid)
            elif kind == Op.SHUTDOWN:
                self.cancels.cancel_all()
            self.inbox.put(message)

    # -- main thread --------------------------------------------------------------

    def run(self) -> int:
        pending: deque[Message] = deque()
        active: tuple[int, Iterator[StreamEvent]] | None = None
        while True:
            for message in self._take(block=active is None and not pending):
                kind = message["type"]
                if kind == Op.SHUTDOWN:
                    if active is not None:
                        _close(active[1])
                    self._close_engine()
                    return 0
                if kind in QUEUED:
                    pending.append(message)
                elif kind == Op.LOAD:
                    if not self._load(message):
                        return 1
                else:
                    self._quick(message)
            if active is None and pending:
                active = self._start(pending.popleft())
            if active is not None:
                active = self._step(*active)

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
            engine = load_engine_class(spec.engine)()
            info = engine.load(spec)
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
        self.engine, self.info = engine, info
        self.channel.reply(rid, Reply.RESULT, value=info.to_dict())
        return True

    def _loaded(self) -> Engine:
        if self.engine is None:
            raise EngineError("no model is loaded")
        return self.engine

    def _quick(self, message: Message) -> None:
        rid, kind = message["id"], message["type"]
        try:
            if kind == Op.COUNT_TOKENS:
                value: object = self._loaded().count_tokens(str(message["text"]))
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

    def _start(self, message: Message) -> tuple[int, Iterator[StreamEvent]] | None:
        rid = message["id"]
        if self.cancels.is_cancelled(rid):  # the daemon gave up on it while it waited
            self.cancels.finish(rid)
            return None
        try:
            engine = self._loaded()
            if message["type"] == Op.EMBED:
                result = engine.embed([str(t) for t in message["texts"]])
                self.channel.reply(rid, Reply.RESULT, value=result.to_dict())
                self.cancels.finish(rid)
                return None
            request = request_from_dict(message["request"])
            events = iter(engine.generate(request, lambda: self.cancels.is_cancelled(rid)))
        except Exception as exc:
            self._fail(rid, exc)
            return None
        return rid, events

    def _step(
        self, rid: int, events: Iterator[StreamEvent]
    ) -> tuple[int, Iterator[StreamEvent]] | None:
        try:
            event = next(events)
        except StopIteration:
            self._fail(rid, EngineError("the engine ended a generation without a final event"))
            return None
        except Exception as exc:
            self._fail(rid, exc)
            return None
        if isinstance(event, DoneEvent):
            self.channel.reply(rid, Reply.DONE, event=event.to_dict())
            self.cancels.finish(rid)
            return None
        self.channel.reply(rid, Reply.TOKEN, event=event.to_dict())
        return rid, events

    def _fail(self, rid: int, exc: Exception) -> None:
        if not isinstance(exc, LmsError):  # a bug or a library failure: keep the traceback
            log.warning("request %d failed", rid, exc_info=exc)
        self.channel.error(rid, exc)
        self.cancels.finish(rid)

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def _close(events: Iterator[StreamEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


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
    server = WorkerServer(Channel(socket.socket(fileno=args.fd)))
    threading.Thread(target=server.read_loop, name="worker-reader", daemon=True).start()
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
