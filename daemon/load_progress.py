"""How far one instance's load has got: the latest value, and a way to follow it.

The engine reports progress (0..1) as it reads the model (engines/worker.py's `progress`
frames); the manager writes it here. Anyone may follow it (`lms load`'s progress bar
through the streamed load API, the SDK's `loadProgress`): `follow()` yields the current
value once the engine has reported one (so a load refused before its engine starts, by
the guardrail say, yields nothing), then each new one, and ends when the load does,
however it ends. Values never go back; a follower that falls behind sees the latest.
"""

import asyncio
from collections.abc import AsyncIterator


class LoadProgress:
    def __init__(self) -> None:
        self.value = 0.0
        self.started = False  # the engine has reported (it is reading the model)
        self.done = False
        self._changed = asyncio.Event()

    def update(self, value: float) -> None:
        value = min(1.0, max(self.value, value))
        if self.done or (self.started and value == self.value):
            return
        self.started = True
        self.value = value
        self._wake()

    def finish(self) -> None:
        """The load ended (loaded, failed or abandoned); followers stop. Idempotent."""
        if not self.done:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        # Every follower waits on the event of its time: set it, and start a new one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[float]:
        last: float | None = None
        while True:
            changed = self._changed
            if self.started and self.value != last:
                last = self.value
                yield last
            if self.done:
                return
            await changed.wait()
