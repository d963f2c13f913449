"""A loaded model instance and its lifecycle states.

    loading ──► loaded ──► draining ──► unloaded
       │           │                       ▲
       └──► failed ◄── (worker died) ──────┘

Transitions are checked: anything else is a bug, not a state. Only the manager writes
an instance (its state, its counters, its engine); everyone else reads it, and a request
uses it only through a manager lease.
"""

import asyncio
import enum
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.catalog import ModelRecord
from daemon.eviction import InstanceFacts, Origin
from daemon.load_progress import LoadProgress
from lms.api.lifecycle import ProcessingStatus

if TYPE_CHECKING:
    from daemon.engines.handle import EngineHandle


class State(enum.Enum):
    LOADING = "loading"
    LOADED = "loaded"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    FAILED = "failed"


ALLOWED: dict[State, set[State]] = {
    State.LOADING: {State.LOADED, State.FAILED, State.UNLOADED},
    State.LOADED: {State.DRAINING, State.UNLOADED, State.FAILED},
    State.DRAINING: {State.UNLOADED, State.FAILED},
    State.UNLOADED: set(),
    State.FAILED: set(),
}


# The engine settings of a load beyond context, GPU and parallel (docs/engines.md):
# the same names in LoadConfig, LoadRequest, the load API and the `default_*` settings.
ENGINE_SETTINGS = (
    "kv_pool",
    "flash_attention",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "threads",
    "use_mmap",
    "keep_model_in_memory",
    "seed",
    "offload_kv_cache_to_gpu",
)


@dataclass(frozen=True)
class LoadConfig:
    context_length: int
    gpu_ratio: float | None  # None: the engine's choice (all layers when it can offload)
    parallel: int
    kv_pool: str = "shared"  # "shared": one KV pool for all slots; "per_slot"
    flash_attention: str = "on"  # "on" | "off" | "auto"
    kv_cache_type_k: str = "f16"  # "f16" | "q8_0" | "q4_0"
    kv_cache_type_v: str = "f16"
    threads: int | None = None  # None: one per physical core
    use_mmap: bool = True
    keep_model_in_memory: bool = False  # mlock
    seed: int | None = None  # seeds requests without a seed; None: random
    offload_kv_cache_to_gpu: bool = True


@dataclass(frozen=True)
class LoadRequest:
    """What a caller asked for; None fields take the defaults."""

    context_length: int | None = None
    gpu_ratio: float | None = None
    parallel: int | None = None
    kv_pool: str | None = None
    flash_attention: str | None = None
    kv_cache_type_k: str | None = None
    kv_cache_type_v: str | None = None
    threads: int | None = None
    use_mmap: bool | None = None
    keep_model_in_memory: bool | None = None
    seed: int | None = None
    offload_kv_cache_to_gpu: bool | None = None

    def conflicts_with(self, config: LoadConfig) -> list[str]:
        """The fields given here that differ from an existing instance's config."""
        return [
            name
            for name in ("context_length", "gpu_ratio", "parallel", *ENGINE_SETTINGS)
            if getattr(self, name) is not None and getattr(self, name) != getattr(config, name)
        ]


@dataclass(eq=False)
class Instance:
    identifier: str
    record: ModelRecord
    config: LoadConfig
    origin: Origin
    ttl: float | None
    idle_since: float
    state: State = State.LOADING
    engine: "EngineHandle | None" = None  # set once loaded; None again once gone
    failure: str | None = None  # why it failed, once FAILED
    in_flight: int = 0  # leases held (running or waiting for a slot)
    prompt_processing: int = 0  # predictions reading their prompt
    generating: int = 0  # predictions past their first token
    load_seconds: float = 0.0
    memory_bytes: int = 0
    # Unique per loaded instance (LM Studio's `instanceReference`): the same identifier
    # loaded again is another instance, with another reference.
    reference: str = field(default_factory=lambda: uuid.uuid4().hex)
    loaded: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    progress: LoadProgress = field(default_factory=LoadProgress)  # of its load, 0..1

    def move_to(self, state: State) -> None:
        if state not in ALLOWED[self.state]:
            raise RuntimeError(f"{self.identifier}: {self.state.value} -> {state.value}")
        self.state = state
        if state in (State.UNLOADED, State.FAILED):
            self.gone.set()

    @property
    def usable(self) -> bool:
        """Accepts new requests: loading (they wait) or loaded, not draining or gone."""
        return self.state in (State.LOADING, State.LOADED)

    @property
    def status(self) -> ProcessingStatus:
        """LM Studio's processing status, as `lms ps` shows it."""
        if self.state is State.LOADING:
            return "loading"
        if self.generating:
            return "generating"
        if self.prompt_processing:
            return "processingPrompt"
        return "idle"

    def facts(self) -> InstanceFacts:
        return InstanceFacts(
            identifier=self.identifier,
            origin=self.origin,
            in_flight=self.in_flight,
            idle_since=self.idle_since,
            ttl=self.ttl,
            memory_bytes=self.memory_bytes,
        )
