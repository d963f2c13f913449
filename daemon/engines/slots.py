"""Slots over plain `Engine.generate` iterators: a BatchingEngine for engines that have no
batched decode of their own. Each step advances every active generation by one event. With
one slot this is exactly the old one-at-a-time worker; the fake engine uses several."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from daemon.engines.base import DoneEvent, GenerationRequest, SlotOutput, StreamEvent
from daemon.errors import EngineError

Start = Callable[[GenerationRequest, Callable[[], bool]], Iterator[StreamEvent]]


class SlotRunner(Protocol):
    def slot_count(self) -> int: ...

    def free_slots(self) -> int: ...

    def active(self) -> int: ...

    def step(self) -> list[SlotOutput]: ...

    def abort_all(self) -> None: ...


class DelegatedSlots:
    """The BatchingEngine methods an engine only forwards to its slot runner; the engine
    provides `_slot_runner()` and its own `admit` (which prepares the request)."""

    def _slot_runner(self) -> SlotRunner:
        raise NotImplementedError

    def slot_count(self) -> int:
        return self._slot_runner().slot_count()

    def free_slots(self) -> int:
        return self._slot_runner().free_slots()

    def active(self) -> int:
        return self._slot_runner().active()

    def step(self) -> list[SlotOutput]:
        return self._slot_runner().step()

    def abort_all(self) -> None:
        self._slot_runner().abort_all()


@dataclass
class _Running:
    key: int
    events: Iterator[StreamEvent]
    waited: float  # seconds between arriving and starting


class IteratorSlots:
    def __init__(
        self,
        start: Start,
        slots: int = 1,
        *,
        before_step: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._start = start
        self._slots = max(1, slots)
        self._before_step = before_step
        self._clock = clock
        self._running: list[_Running] = []

    def slot_count(self) -> int:
        return self._slots

    def free_slots(self) -> int:
        return self._slots - len(self._running)

    def active(self) -> int:
        return len(self._running)

    def admit(
        self,
        key: int,
        request: GenerationRequest,
        cancelled: Callable[[], bool],
        arrived: float,
    ) -> None:
        if not self.free_slots():
            raise EngineError("no free slot")
        began = self._clock()
        events = iter(self._start(request, cancelled))
        self._running.append(_Running(key, events, max(0.0, began - arrived)))

    def step(self) -> list[SlotOutput]:
        if self._before_step is not None and self._running:
            self._before_step()
        out: list[SlotOutput] = []
        for run in list(self._running):
            try:
                event = next(run.events)
            except StopIteration:
                error = EngineError("the engine ended a generation without a final event")
                out.append((run.key, error))
                self._running.remove(run)
                continue
            except Exception as exc:
                out.append((run.key, exc))
                self._running.remove(run)
                continue
            if isinstance(event, DoneEvent):
                # The engine timed from when it started; the wait for a slot counts too.
                ttft = event.time_to_first_token + run.waited
                event = dataclasses.replace(event, time_to_first_token=ttft)
                self._running.remove(run)
            out.append((run.key, event))
        return out

    def abort_all(self) -> None:
        for run in self._running:
            close = getattr(run.events, "close", None)
            if close is not None:
                close()
        self._running.clear()
