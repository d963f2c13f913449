"""The daemon's side of the scheduler protocol (worker.py's `WorkerServer`), whatever
carries the messages: many requests in flight, each reply matched to its request by id.

`WorkerHandle` (host.py) carries them over a worker process's socket; `ThreadHandle`
(inprocess.py) hands them to a scheduler on a thread of the daemon. Both are
`EngineHandle`s (handle.py). Everything here runs on the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from daemon.engines.base import (
    DoneEvent,
    EmbedResult,
    EngineInfo,
    GenerationRequest,
    LoadSpec,
    PromptInput,
    StreamEvent,
    TokenEvent,
)
from daemon.engines.protocol import Message, Op, Reply, error_from_wire
from daemon.errors import LmsError, ModelUnloaded, ProtocolError, WorkerCrashed

log = logging.getLogger(__name__)

# Called once when an engine that was serving ends without being asked to (crash, kill).
OnExit = Callable[["EngineClient", str], None]
# Called on the event loop with a load's progress (0..1) as the engine reports it.
OnProgress = Callable[[float], None]


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    CLOSING = "closing"
    EXITED = "exited"


class EngineClient:
    """Requests and replies over some transport; subclasses say how messages travel
    (`_post`, `_post_nowait`) and report the engine's end with `_ended`."""

    def __init__(self, spec: LoadSpec, on_exit: OnExit | None) -> None:
        self.spec = spec
        self._on_exit = on_exit
        self._state = State.STARTING
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Message | LmsError]] = {}
        self._progress: dict[int, OnProgress] = {}  # loads in flight whose progress is followed
        self._exit_reason: str | None = None
        self._info: EngineInfo | None = None

    # -- what a transport provides ----------------------------------------------------

    async def _post(self, message: Message) -> None:
        raise NotImplementedError

    def _post_nowait(self, message: Message) -> None:
        """Send without waiting, and never fail (a cancel, a shutdown)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The process that holds the model (None: the daemon's own)."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Memory the model holds, measured (0 when it cannot be told apart)."""
        return 0

    # -- state ------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("the engine has not loaded its model yet")
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

    def _ended(self, reason: str) -> bool:
        """The engine is gone: fail what was in flight, and tell the owner when nobody
        asked it to go. Returns whether the end was unexpected."""
        expected = self._state is State.CLOSING
        was_ready = self._state is State.READY
        self._exit_reason = None if expected else reason
        self._state = State.EXITED
        gone = self._gone_error() or ModelUnloaded()
        for future in self._calls.values():
            if not future.done():
                future.set_exception(gone)
        self._calls.clear()
        for replies in self._streams.values():
            replies.put_nowait(gone)
        if was_ready and self._on_exit is not None:
            try:
                self._on_exit(self, reason)
            except Exception:
                log.exception("on_exit callback failed for %s", self.spec.model_path)
        return not expected

    # -- requests ---------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """TokenEvents, then one DoneEvent. If the consumer stops early (aclose(), a client
        disconnect) the engine is told to cancel this request and this returns at once."""
        self._check_usable()
        rid = next(self._ids)
        replies: asyncio.Queue[Message | LmsError] = asyncio.Queue()
        self._streams[rid] = replies
        finished = False
        try:
            await self._post({"type": Op.GENERATE.value, "id": rid, "request": request.to_dict()})
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
                self._post_nowait({"type": Op.CANCEL.value, "id": rid})

    async def embed(self, texts: list[PromptInput]) -> EmbedResult:
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

    async def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in await self._call(Op.TOKENIZE, text=text)]

    async def _load(self, spec: LoadSpec, on_progress: OnProgress | None) -> None:
        """Loads the model; `on_progress` hears how far it has got. Cancelling this tells
        the engine to stop loading (the caller then closes or kills it)."""
        value = await self._call(Op.LOAD, on_progress=on_progress, spec=spec.to_dict())
        self._info = EngineInfo.from_dict(value)

    async def _call(self, op: Op, *, on_progress: OnProgress | None = None, **fields: Any) -> Any:
        self._check_usable()
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = future
        if on_progress is not None:
            self._progress[rid] = on_progress
        try:
            await self._post({"type": op.value, "id": rid, **fields})
            return await future
        finally:
            self._progress.pop(rid, None)
            if self._calls.pop(rid, None) is not None and op in (Op.EMBED, Op.LOAD):
                self._post_nowait({"type": Op.CANCEL.value, "id": rid})

    def _dispatch(self, message: Message) -> None:
        rid = message["id"]
        if rid in self._streams:
            self._streams[rid].put_nowait(message)
            return
        if message["type"] == Reply.PROGRESS:
            listener = self._progress.get(rid)
            if listener is not None:
                try:
                    listener(float(message.get("value", 0.0)))
                except Exception:  # a listener's bug must not end the engine's reader
                    log.exception("load progress listener failed")
            return
        future = self._calls.pop(rid, None)
        if future is None or future.done():
            return  # a late reply for a request its caller gave up on
        if message["type"] == Reply.RESULT:
            future.set_result(message.get("value"))
        elif message["type"] == Reply.ERROR:
            future.set_exception(error_from_wire(message.get("error")))
        else:
            future.set_exception(ProtocolError(f"unexpected {message['type']!r} reply"))
