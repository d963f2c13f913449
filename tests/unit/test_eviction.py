"""The pure eviction policy: TTL deadlines, auto-evict, memory victims."""

from daemon.eviction import (
    InstanceFacts,
    auto_evict_victims,
    expired,
    memory_victims,
    next_deadline,
)


def facts(
    ident: str,
    *,
    origin: str = "jit",
    in_flight: int = 0,
    idle_since: float = 0.0,
    ttl: float | None = None,
    memory: int = 100,
) -> InstanceFacts:
    return InstanceFacts(ident, origin, in_flight, idle_since, ttl, memory)  # type: ignore[arg-type]


def test_ttl_counts_from_when_the_instance_went_idle() -> None:
    instances = [facts("a", idle_since=10, ttl=5), facts("b", idle_since=0, ttl=None)]
    assert expired(instances, now=14.9) == []
    assert expired(instances, now=15) == ["a"]
    assert next_deadline(instances) == 15


def test_a_busy_instance_never_expires() -> None:
    busy = facts("a", idle_since=0, ttl=1, in_flight=1)
    assert expired([busy], now=1000) == []
    assert next_deadline([busy]) is None


def test_ttl_zero_unloads_as_soon_as_idle() -> None:
    assert expired([facts("a", idle_since=3, ttl=0)], now=3) == ["a"]


def test_auto_evict_takes_other_jit_instances_only() -> None:
    loaded = [facts("a"), facts("b", origin="manual"), facts("c", in_flight=2), facts("d")]
    assert auto_evict_victims(loaded, loading="d") == ["a", "c"]


def test_memory_victims_are_idle_jit_least_recently_used_first() -> None:
    loaded = [
        facts("new", idle_since=30, memory=300),
        facts("old", idle_since=10, memory=200),
        facts("busy", idle_since=0, memory=1000, in_flight=1),
        facts("pinned", origin="manual", idle_since=0, memory=1000),
    ]
    assert memory_victims(loaded, needed_bytes=100, available_bytes=100) == []
    assert memory_victims(loaded, needed_bytes=250, available_bytes=100) == ["old"]
    assert memory_victims(loaded, needed_bytes=550, available_bytes=100) == ["old", "new"]
    assert memory_victims(loaded, needed_bytes=700, available_bytes=100) is None
