"""Pure decisions about which loaded instances to unload: no I/O, no clock reads, no
logging. The manager gathers the facts, asks here, and acts.

- Idle TTL: an instance with a TTL expires `ttl` seconds after it last became idle; an
  instance with requests in flight never expires (its timer starts when it goes idle).
- Auto-evict (LM Studio's "only keep the last JIT model"): JIT-loading a model unloads
  the instances previously JIT-loaded; busy ones drain first; `lms load`ed ones stay.
- Memory: to make room, idle JIT instances go first, least recently used first.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Origin = Literal["jit", "manual"]


@dataclass(frozen=True)
class InstanceFacts:
    identifier: str
    origin: Origin
    in_flight: int  # leases held: requests running or queued on the instance
    idle_since: float  # clock reading when in_flight last dropped to 0 (or load time)
    ttl: float | None  # seconds; None = never expires
    memory_bytes: int


def ttl_deadline(facts: InstanceFacts) -> float | None:
    """When the instance expires, or None while it is busy or has no TTL."""
    if facts.ttl is None or facts.in_flight > 0:
        return None
    return facts.idle_since + facts.ttl


def expired(instances: Iterable[InstanceFacts], now: float) -> list[str]:
    return [
        f.identifier
        for f in instances
        if (deadline := ttl_deadline(f)) is not None and deadline <= now
    ]


def next_deadline(instances: Iterable[InstanceFacts]) -> float | None:
    deadlines = [d for f in instances if (d := ttl_deadline(f)) is not None]
    return min(deadlines, default=None)


def auto_evict_victims(loaded: Sequence[InstanceFacts], *, loading: str) -> list[str]:
    """Instances to unload before JIT-loading `loading`: every other JIT instance."""
    return [f.identifier for f in loaded if f.origin == "jit" and f.identifier != loading]


def memory_victims(
    loaded: Sequence[InstanceFacts], *, needed_bytes: int, available_bytes: int
) -> list[str] | None:
    """Idle JIT instances to unload, least recently used first, until `needed_bytes`
    fits in `available_bytes` plus what they free. None when even that is not enough."""
    if needed_bytes <= available_bytes:
        return []
    candidates = sorted(
        (f for f in loaded if f.origin == "jit" and f.in_flight == 0),
        key=lambda f: f.idle_since,
    )
    victims: list[str] = []
    freed = 0
    for facts in candidates:
        victims.append(facts.identifier)
        freed += facts.memory_bytes
        if needed_bytes <= available_bytes + freed:
            return victims
    return None
