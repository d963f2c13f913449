"""The daemon's side of a model worker: spawn it, talk to it, notice its death, reap it.

Everything here runs on the daemon's event loop: no threads, and every task a handle
creates (the frame reader, the output pump, the close) is owned by it and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import psutil

from daemon.engines.base import LoadSpec
from daemon.engines.client import EngineClient, OnExit, OnProgress, State
from daemon.engines.protocol import FrameBuffer, Message, Op, encode_frame
from daemon.errors import (
    CrashedWhileLoading,
    LmsError,
    LoadFailed,
    ProtocolError,
    WorkerCrashed,
)

log = logging.getLogger(__name__)

OUTPUT_TAIL_LINES = 20
EXIT_AFTER_EOF_S = 5.0  # a worker that closed its socket but lingers is killed after this
TERM_GRACE_S = 3.0  # after SIGTERM, before SIGKILL
READ_BYTES = 1 << 20  # the most one read of the worker's socket takes (what is buffered)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 0:
        return "exited without being asked to"
    return f"exited with code {returncode}"


class WorkerHandle(EngineClient):
    """One worker process holding one loaded model instance. Make one with `start()`."""

    def __init__(
        self,
        spec: LoadSpec,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_exit: OnExit | None,
    ) -> None:
        super().__init__(spec, on_exit)
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._output: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._close_task: asyncio.Task[None] | None = None
        self._output_task = asyncio.create_task(self._pump_output(), name=f"worker-out-{self.pid}")
        self._reader_task = asyncio.create_task(self._read_frames(), name=f"worker-rx-{self.pid}")

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        spec: LoadSpec,
        *,
        on_exit: OnExit | None = None,
        on_progress: OnProgress | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerHandle:
        """Spawns a worker and loads the model in it; returns once it is loaded. Raises
        LoadFailed (and leaves no process behind) when it cannot be loaded; cancelled, it
        kills the worker. `on_exit` is called once if the worker later dies without being
        asked to (crash, kill); `on_progress` with the load's progress (0..1)."""
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
            await handle._load(spec, on_progress)
        except BaseException as exc:
            # Nothing to save in a half-loaded worker (and a cancelled load may take long).
            if handle._state is not State.EXITED:
                handle._state = State.CLOSING
                handle._kill()
            await handle.close()
            if isinstance(exc, WorkerCrashed):
                raise CrashedWhileLoading(
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
            self._post_nowait({"type": Op.SHUTDOWN.value, "id": 0})
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

    def memory_bytes(self) -> int:
        """Resident memory of the worker process (0 once it is gone)."""
        if self._proc.returncode is not None:
            return 0
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    # -- plumbing ---------------------------------------------------------------------

    async def _post(self, message: Message) -> None:
        frame = encode_frame(message)
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError):
            # The worker is gone; the reader is about to say why. Wait for it to.
            await asyncio.wait({self._reader_task}, timeout=EXIT_AFTER_EOF_S + 1)
            self._check_usable()
            raise

    def _post_nowait(self, message: Message) -> None:
        if self._state is State.EXITED or self._writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.write(encode_frame(message))

    async def _read_frames(self) -> None:
        problem: str | None = None
        frames = FrameBuffer()
        try:
            while data := await self._reader.read(READ_BYTES):
                for message in frames.feed(data):
                    self._dispatch(message)
            if frames.pending:
                raise ProtocolError(f"connection closed inside a frame ({frames.pending} bytes)")
        except ProtocolError as exc:
            problem = f"sent a malformed frame ({exc})"
            log.error("worker %d %s; killing it", self.pid, problem)
            self._kill()
        except (ConnectionError, OSError):
            pass  # a reset (it died with our frames unread) is an end like EOF
        await self._after_eof(problem)

    async def _after_eof(self, problem: str | None) -> None:
        """The socket closed: the worker exited (or is about to). Find out how, fail what
        was in flight, and tell the owner if nobody asked it to go."""
        if not await self._wait_exit(EXIT_AFTER_EOF_S):
            self._kill()
        returncode = await self._proc.wait()
        await asyncio.wait({self._output_task}, timeout=1.0)  # its last words, for the log
        self._writer.close()
        reason = problem or describe_exit(returncode)
        if self._state is not State.CLOSING:
            tail = "".join(f"\n  | {line}" for line in self._output)
            log.warning(
                "model worker %d (%s) died: %s%s", self.pid, self.spec.model_path, reason, tail
            )
        self._ended(reason)

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
