"""A circuit breaker per upstream: pure state with an injected clock.

    closed ──`threshold` failures in a row──► open ──`reset_after` s──► half-open
       ▲                                                                │ one probe
       └──────────── the probe succeeds ◄───────────────────────────────┘
                     (it fails: open again, for another `reset_after`)

While open, no request is sent to the upstream (the pool fails over to another one, or
answers 503 naming it). A success anywhere closes it and clears the failures.
"""

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, *, threshold: int = 3, reset_after: float = 30.0, clock: Callable[[], float]
    ) -> None:
        if threshold < 1 or reset_after <= 0:
            raise ValueError("a breaker needs threshold >= 1 and reset_after > 0")
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose time is up reads half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_after:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def available(self) -> bool:
        """Whether a request could be let through now (without taking the probe)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def allow(self) -> bool:
        """Whether to send a request now; in half-open, only the first caller (the probe)
        is let through until it reports."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probing:
            return False
        self._state = BreakerState.HALF_OPEN
        self._probing = True
        return True

    def success(self) -> bool:
        """Records a success; True when this closed the breaker."""
        was_open = self._state is not BreakerState.CLOSED
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False
        return was_open

    def failure(self) -> bool:
        """Records a failure; True when this opened the breaker."""
        self._failures += 1
        probe_failed = self._probing or self.state is BreakerState.HALF_OPEN
        self._probing = False
        if probe_failed or (
            self._state is BreakerState.CLOSED and self._failures >= self.threshold
        ):
            opened = self._state is not BreakerState.OPEN or probe_failed
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            return opened
        return False
