"""How far one instance's load has got: the latest value, and a way to follow it.

The engine reports progress (0..1) as it reads the model (engines/worker.py's `progress`
frames, at most one per percent); the manager writes it here. Anyone may follow it (`lms
load`'s progress bar through the streamed load API, the SDK's `loadProgress`): `follow()`
yields the current value once the engine has reported one (so a load refused before its
engine starts, by the guardrail say, yields nothing), then every later one, in order, and
ends when the load does, however it ends. Values never go back. A follower gets every
value, not only the latest: a small model reports its whole load within milliseconds, in
one burst, and its steps are still worth drawing (at most about a hundred per load).
"""

import asyncio
from collections.abc import AsyncIterator


class LoadProgress:
    def __init__(self) -> None:
        self.value = 0.0
        self.started = False  # the engine has reported (it is reading the model)
        self.done = False
        self._followers: set[asyncio.Queue[float | None]] = set()

    def update(self, value: float) -> None:
        value = min(1.0, max(self.value, value))
        if self.done or (self.started and value == self.value):
            return
        self.started = True
        self.value = value
        for follower in self._followers:
            follower.put_nowait(value)

    def finish(self) -> None:
        """The load ended (loaded, failed or abandoned); followers stop. Idempotent."""
        if not self.done:
            self.done = True
            for follower in self._followers:
                follower.put_nowait(None)

    async def follow(self) -> AsyncIterator[float]:
        heard: asyncio.Queue[float | None] = asyncio.Queue()
        if self.started:
            heard.put_nowait(self.value)
        if self.done:
            heard.put_nowait(None)
        self._followers.add(heard)
        try:
            while (value := await heard.get()) is not None:
                yield value
        finally:
            self._followers.discard(heard)
