"""How far one instance's load has got: the latest value, and a way to follow it.

The engine reports progress (0..1) as it reads the model (engines/worker.py's `progress`
frames); the manager writes it here. Anyone may follow it (`lms load`'s progress bar
through the streamed load API, the SDK's `loadProgress`): `follow()` yields the current
value at once, then each new one, and ends when the load does, however it ends. Values
never go back, and a follower that falls behind sees only the latest one.
"""

import asyncio
from collections.abc import AsyncIterator


class LoadProgress:
    def __init__(self) -> None:
        self.value = 0.0
        self.done = False
        self._changed = asyncio.Event()

    def update(self, value: float) -> None:
        value = min(1.0, max(self.value, value))
        if value != self.value and not self.done:
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
            if self.value != last:
                last = self.value
                yield last
            if self.done:
                return
            await changed.wait()
