"""The daemon's side of a model worker: spawn it, talk to it, notice its death, reap it.

Everything here runs on the daemon's event loop: no threads, and every task a handle
creates (the frame reader, the output pump, the close) is owned by it and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from daemon.engines.base import (
    DoneEvent,
    EmbedResult,
    EngineInfo,
    GenerationRequest,
    LoadSpec,
    StreamEvent,
    TokenEvent,
)
from daemon.engines.protocol import (
    Message,
    Op,
    Reply,
    encode_frame,
    error_from_wire,
    read_frame_async,
)
from daemon.errors import LmsError, LoadFailed, ModelUnloaded, ProtocolError, WorkerCrashed

log = logging.getLogger(__name__)

OUTPUT_TAIL_LINES = 20
EXIT_AFTER_EOF_S = 5.0  # a worker that closed its socket but lingers is killed after this
TERM_GRACE_S = 3.0  # after SIGTERM, before SIGKILL
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

OnExit = Callable[["WorkerHandle", str], None]


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    CLOSING = "closing"
    EXITED = "exited"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 0:
        return "exited without being asked to"
    return f"exited with code {returncode}"


class WorkerHandle:
    """One worker process holding one loaded model instance. Make one with `start()`."""

    def __init__(
        self,
        spec: LoadSpec,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_exit: OnExit | None,
    ) -> None:
        self.spec = spec
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._on_exit = on_exit
        self._state = State.STARTING
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Message | LmsError]] = {}
        self._output: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._exit_reason: str | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._info: EngineInfo | None = None
        self._output_task = asyncio.create_task(self._pump_output(), name=f"worker-out-{self.pid}")
        self._reader_task = asyncio.create_task(self._read_frames(), name=f"worker-rx-{self.pid}")

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        spec: LoadSpec,
        *,
        on_exit: OnExit | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerHandle:
        """Spawns a worker and loads the model in it; returns once it is loaded. Raises
        LoadFailed (and leaves no process behind) when it cannot be loaded. `on_exit`
        is called once if the worker later dies without being asked to (crash, kill)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
        argv = ["-m", "daemon.engines.worker", "--fd", str(theirs.fileno())]
        argv += ["--parent-pid", str(os.getpid())]
        if spec.verbose or log.isEnabledFor(logging.DEBUG):
            argv += ["--log-level", "debug"]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except OSError as exc:
            ours.close()
            raise LoadFailed(f"cannot start a model worker: {exc}") from exc
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        handle = cls(spec, proc, reader, writer, on_exit)
        try:
            value = await handle._call(Op.LOAD, spec=spec.to_dict())
            handle._info = EngineInfo.from_dict(value)
        except BaseException as exc:
            # Nothing to save in a half-loaded worker (and a cancelled load may take long).
            if handle._state is not State.EXITED:
                handle._state = State.CLOSING
                handle._kill()
            await handle.close()
            if isinstance(exc, WorkerCrashed):
                raise LoadFailed(
                    f"the model worker died while loading {spec.model_path}: "
                    f"{exc.reason}{handle._last_output()}"
                ) from exc
            if isinstance(exc, LmsError) and not isinstance(exc, LoadFailed):
                raise LoadFailed(f"cannot load {spec.model_path}: {exc}") from exc
            raise
        handle._state = State.READY
        log.info("worker %d loaded %s (%s)", handle.pid, spec.model_path, handle.info.runtime_name)
        return handle

    async def close(self, timeout: float = 5.0, *, term_grace: float = TERM_GRACE_S) -> None:
        """Asks the worker to exit (waiting `timeout`), then SIGTERM (waiting `term_grace`),
        then SIGKILL; always reaps it. Requests still in flight fail with ModelUnloaded.
        Safe to call any number of times, also after a crash."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(
                self._close(timeout, term_grace), name=f"worker-close-{self.pid}"
            )
        await asyncio.shield(self._close_task)

    async def _close(self, timeout: float, term_grace: float) -> None:
        if self._state is not State.EXITED:
            self._state = State.CLOSING
            self._write_nowait({"type": Op.SHUTDOWN.value, "id": 0})
            if not await self._wait_exit(timeout):
                log.warning("worker %d did not exit in %.1fs; terminating it", self.pid, timeout)
                self._signal(signal.SIGTERM)
                if not await self._wait_exit(term_grace):
                    self._kill()
        await self._proc.wait()
        await self._reader_task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._output_task, 2.0)  # cancels it on timeout
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _kill(self) -> None:
        self._signal(signal.SIGKILL)

    # -- what the daemon asks ---------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("the worker has not loaded its model yet")
        return self._info

    @property
    def state(self) -> State:
        return self._state

    @property
    def alive(self) -> bool:
        return self._state in (State.STARTING, State.READY)

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (0 once it is gone)."""
        if self._proc.returncode is not None:
            return 0
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """TokenEvents, then one DoneEvent. If the consumer stops early (aclose(), a client
        disconnect) the worker is told to cancel this request and this returns at once."""
        self._check_usable()
        rid = next(self._ids)
        replies: asyncio.Queue[Message | LmsError] = asyncio.Queue()
        self._streams[rid] = replies
        finished = False
        try:
            await self._send({"type": Op.GENERATE.value, "id": rid, "request": request.to_dict()})
            while True:
                reply = await replies.get()
                if isinstance(reply, LmsError):
                    finished = True
                    raise reply
                kind = reply["type"]
                if kind == Reply.TOKEN:
                    yield TokenEvent.from_dict(reply["event"])
                elif kind == Reply.DONE:
                    finished = True
                    yield DoneEvent.from_dict(reply["event"])
                    return
                elif kind == Reply.ERROR:
                    finished = True
                    raise error_from_wire(reply["error"])
                else:
                    raise ProtocolError(f"unexpected {kind!r} frame in a generation")
        finally:
            del self._streams[rid]
            if not finished:
                self._write_nowait({"type": Op.CANCEL.value, "id": rid})

    async def embed(self, texts: list[str]) -> EmbedResult:
        return EmbedResult.from_dict(await self._call(Op.EMBED, texts=list(texts)))

    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        value = await self._call(
            Op.RENDER_CHAT,
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
        )
        return str(value)

    async def count_tokens(self, text: str) -> int:
        return int(await self._call(Op.COUNT_TOKENS, text=text))

    async def fetch_info(self) -> EngineInfo:
        """Asks the worker itself (a liveness check as much as anything)."""
        return EngineInfo.from_dict(await self._call(Op.INFO))

    # -- plumbing ---------------------------------------------------------------------

    def _gone_error(self) -> LmsError | None:
        if self._state is State.EXITED and self._exit_reason is not None:
            return WorkerCrashed(self.pid, self._exit_reason)
        if self._state in (State.CLOSING, State.EXITED):
            return ModelUnloaded(f"the model {self.spec.model_path} was unloaded")
        return None

    def _check_usable(self) -> None:
        error = self._gone_error()
        if error is not None:
            raise error

    async def _call(self, op: Op, **fields: Any) -> Any:
        self._check_usable()
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = future
        try:
            await self._send({"type": op.value, "id": rid, **fields})
            return await future
        finally:
            if self._calls.pop(rid, None) is not None and op in (Op.EMBED,):
                self._write_nowait({"type": Op.CANCEL.value, "id": rid})

    async def _send(self, message: Message) -> None:
        frame = encode_frame(message)
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError):
            # The worker is gone; the reader is about to say why. Wait for it to.
            await asyncio.wait({self._reader_task}, timeout=EXIT_AFTER_EOF_S + 1)
            self._check_usable()
            raise

    def _write_nowait(self, message: Message) -> None:
        if self._state is State.EXITED or self._writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.write(encode_frame(message))

    async def _read_frames(self) -> None:
        problem: str | None = None
        try:
            while (message := await read_frame_async(self._reader)) is not None:
                self._dispatch(message)
        except ProtocolError as exc:
            problem = f"sent a malformed frame ({exc})"
            log.error("worker %d %s; killing it", self.pid, problem)
            self._kill()
        except (ConnectionError, OSError):
            pass  # a reset (it died with our frames unread) is an end like EOF
        await self._after_eof(problem)

    def _dispatch(self, message: Message) -> None:
        rid = message["id"]
        if rid in self._streams:
            self._streams[rid].put_nowait(message)
            return
        future = self._calls.pop(rid, None)
        if future is None or future.done():
            return  # a late frame for a request its caller gave up on
        if message["type"] == Reply.RESULT:
            future.set_result(message.get("value"))
        elif message["type"] == Reply.ERROR:
            future.set_exception(error_from_wire(message.get("error")))
        else:
            future.set_exception(ProtocolError(f"unexpected {message['type']!r} reply"))

    async def _after_eof(self, problem: str | None) -> None:
        """The socket closed: the worker exited (or is about to). Find out how, fail what
        was in flight, and tell the owner if nobody asked it to go."""
        if not await self._wait_exit(EXIT_AFTER_EOF_S):
            self._kill()
        returncode = await self._proc.wait()
        await asyncio.wait({self._output_task}, timeout=1.0)  # its last words, for the log
        expected = self._state is State.CLOSING
        was_ready = self._state is State.READY
        reason = problem or describe_exit(returncode)
        self._exit_reason = None if expected else reason
        self._state = State.EXITED
        self._writer.close()
        if not expected:
            tail = "".join(f"\n  | {line}" for line in self._output)
            log.warning(
                "model worker %d (%s) died: %s%s", self.pid, self.spec.model_path, reason, tail
            )
        for future in self._calls.values():
            if not future.done():
                future.set_exception(self._gone_error() or ModelUnloaded())
        self._calls.clear()
        for replies in self._streams.values():
            replies.put_nowait(self._gone_error() or ModelUnloaded())
        if was_ready and self._on_exit is not None:
            try:
                self._on_exit(self, reason)
            except Exception:
                log.exception("on_exit callback failed for worker %d", self.pid)

    async def _pump_output(self) -> None:
        """Worker stdout+stderr (llama.cpp logs there) go to the daemon's debug log."""
        stream = self._proc.stdout
        assert stream is not None
        pending = b""
        while chunk := await stream.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log_output(line)
        if pending:
            self._log_output(pending)

    def _log_output(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            self._output.append(line)
            log.debug("worker %d: %s", self.pid, line)

    def _last_output(self) -> str:
        return f"; its last output: {self._output[-1]}" if self._output else ""
