"""The daemon's diagnostic events, behind `lms log stream`.

`EventBus` is owned by the daemon (one per `Daemon`, on the app as `EVENTS`). `publish`
stamps each event `{"timestamp": <ms epoch>, "data": {...}}` and hands it to every
subscriber whose source matches. Each subscriber has a bounded buffer: a reader that falls
behind loses its oldest events (counted in `dropped`); the publisher never blocks and memory
never grows without bound. `close()` ends every subscription (at shutdown, so open log
streams never hold it up).

Everything here runs on the event loop, except `EventLogHandler.emit`, which any thread may
call: off the loop it hops over with `call_soon_threadsafe`.

The event shapes are LM Studio's (DiagnosticsLogEvent):
  {"type": "llm.prediction.input", "input", "modelPath", "modelIdentifier"}
  {"type": "llm.prediction.output", "output", "stats", "modelIdentifier"}
  {"type": "server.log", "content", "level"}
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from lms.api.log import PREDICTION_INPUT, PREDICTION_OUTPUT, SERVER_LOG

DEFAULT_BUFFER = 1000

Event = dict[str, Any]


def source_of(data: Mapping[str, Any]) -> str | None:
    """The `lms log stream --source` an event belongs to (None: no source shows it)."""
    kind = str(data.get("type", ""))
    if kind.startswith("llm.prediction."):
        return "model"
    if kind == SERVER_LOG:
        return "server"
    return None


class Subscription:
    """One reader's buffered view of the bus; iterate it until the bus closes."""

    def __init__(self, source: str | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a subscription needs room for at least one event")
        self.source = source
        self.dropped = 0
        self._buffer: deque[Event] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._closed = False

    def wants(self, data: Mapping[str, Any]) -> bool:
        return self.source is None or source_of(data) == self.source

    def push(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self._maxsize:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        """The next event; what was buffered before a close is still delivered."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()


class EventBus:
    def __init__(self, *, buffer: int = DEFAULT_BUFFER) -> None:
        self._buffer = buffer
        self._subscribers: set[Subscription] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, data: dict[str, Any], *, timestamp_ms: int | None = None) -> None:
        """Stamp the event and fan it out. Never blocks; a no-op once closed."""
        if self._closed or not self._subscribers:
            return
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        event: Event = {"timestamp": stamp, "data": data}
        for subscription in self._subscribers:
            if subscription.wants(data):
                subscription.push(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, source: str | None = None) -> AsyncIterator[Subscription]:
        """`async with bus.subscribe("model") as events: async for event in events: ...`;
        the subscription is live as soon as the block is entered and ends with it."""
        subscription = Subscription(source, self._buffer)
        if self._closed:
            subscription.close()
        else:
            self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription.close()

    def close(self) -> None:
        """End every subscription (their readers finish what is buffered, then stop)."""
        self._closed = True
        for subscription in self._subscribers:
            subscription.close()
        self._subscribers.clear()


# -- server logs -----------------------------------------------------------------------------

_LEVELS = ((logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info"))


def level_name(levelno: int) -> str:
    """LM Studio's level names: error, warn, info, debug."""
    return next((name for floor, name in _LEVELS if levelno >= floor), "debug")


def server_log(content: str, level: str) -> dict[str, Any]:
    return {"type": SERVER_LOG, "content": content, "level": level}


class EventLogHandler(logging.Handler):
    """Publishes log records as `server.log` events on the bus, from any thread.

    A record emitted while this handler is already publishing on the same thread (something
    the fan-out itself logged) is dropped, so logging can never recurse through the bus.
    """

    def __init__(
        self, bus: EventBus, loop: asyncio.AbstractEventLoop, level: int = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self.bus = bus
        self.loop = loop
        self._local = threading.local()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            data = server_log(self.format(record), level_name(record.levelno))
            stamp = int(record.created * 1000)
            if self._on_loop_thread():
                self.bus.publish(data, timestamp_ms=stamp)
            elif not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self._publish, data, stamp)
        except RuntimeError:
            pass  # the loop closed between the check and the call: the event has no reader
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _publish(self, data: dict[str, Any], stamp: int) -> None:
        self._local.busy = True
        try:
            self.bus.publish(data, timestamp_ms=stamp)
        finally:
            self._local.busy = False


# -- model events (LM Studio's shapes; pure) -------------------------------------------------


def prediction_input(model_identifier: str, model_path: str, input_text: str) -> dict[str, Any]:
    return {
        "type": PREDICTION_INPUT,
        "input": input_text,
        "modelPath": model_path,
        "modelIdentifier": model_identifier,
    }


def prediction_output(
    model_identifier: str, output_text: str, stats: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "type": PREDICTION_OUTPUT,
        "output": output_text,
        "stats": stats,
        "modelIdentifier": model_identifier,
    }


def prediction_stats(
    *,
    stop_reason: str,
    tokens_per_second: float,
    time_to_first_token: float,
    prompt_tokens: int,
    predicted_tokens: int,
) -> dict[str, Any]:
    """LM Studio's LLMPredictionStats, the `stats` of a prediction output event."""
    return {
        "stopReason": stop_reason,
        "tokensPerSecond": tokens_per_second,
        "timeToFirstTokenSec": round(time_to_first_token, 3),
        "promptTokensCount": prompt_tokens,
        "predictedTokensCount": predicted_tokens,
        "totalTokensCount": prompt_tokens + predicted_tokens,
    }


class FinishedGeneration(Protocol):
    """What `done_stats` reads from a generation's last event (engines.base.DoneEvent)."""

    @property
    def stop_reason(self) -> str: ...
    @property
    def tokens_per_second(self) -> float: ...
    @property
    def time_to_first_token(self) -> float: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


def done_stats(done: FinishedGeneration) -> dict[str, Any]:
    return prediction_stats(
        stop_reason=str(done.stop_reason),
        tokens_per_second=done.tokens_per_second,
        time_to_first_token=done.time_to_first_token,
        prompt_tokens=done.prompt_tokens,
        predicted_tokens=done.completion_tokens,
    )
