"""The model manager: the only owner of loaded instances.

`async with manager.lease(name, ttl=...) as lease:` is the one way to use a model. It
finds a loaded instance or loads one (just in time; concurrent callers share one load),
counts the request, and on exit releases it. The lease hands out the instance's engine
(never missing: a model that died or was unloaded before the lease began is a typed
error, 502 or 503) and reports what its request is doing (`lease.phase(...)`), which the
manager counts: only the manager writes an instance. Idle TTLs start only when an instance
has no request in flight; an instance chosen for eviction drains first, it is never cut
off. Decisions come from the pure `daemon.eviction`; this module acts on them. One clock,
injectable, times TTLs and idleness.
"""

import asyncio
import contextlib
import dataclasses
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from daemon.catalog import ModelRecord
from daemon.config import Settings
from daemon.engines.base import EngineInfo, LoadSpec
from daemon.engines.handle import EngineHandle, EngineStarter, start_engine
from daemon.errors import (
    InsufficientMemory,
    InvalidRequest,
    LmsError,
    LoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    ModelUnloaded,
    ServerBusy,
    WorkerCrashed,
)
from daemon.eviction import Origin, auto_evict_victims, expired, memory_victims, next_deadline
from daemon.instance import ENGINE_SETTINGS, Instance, LoadConfig, LoadRequest, State
from daemon.memory import GuardrailMode, MemoryEstimate, allowed_bytes, estimate
from daemon.model_store import ModelStore
from lms.api.load_settings import settings_problem
from lms.units import format_bytes

log = logging.getLogger(__name__)

FORMAT_ENGINES = {"gguf": "llama_cpp", "mlx": "mlx"}

# A model's per-model load defaults (model_defaults.py): its load settings and idle TTL.
DefaultsOf = Callable[[ModelRecord], tuple[LoadRequest, float | None]]
# Hears how far an instance's load has got (0..1), on the event loop.
OnLoadProgress = Callable[[Instance, float], None]


def no_defaults(record: ModelRecord) -> tuple[LoadRequest, float | None]:
    return LoadRequest(), None


def with_defaults(request: LoadRequest, defaults: LoadRequest) -> LoadRequest:
    """`request`, the fields it leaves unset taken from `defaults`."""
    given = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if getattr(request, f.name) is not None
    }
    return dataclasses.replace(defaults, **given)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


class Phase(enum.Enum):
    """What a leased request is doing, as `lms ps` shows it."""

    WAITING = "waiting"  # leased, not predicting (yet): queued, embedding, ...
    PROMPT = "prompt"  # reading its prompt
    GENERATING = "generating"  # past its first token


class Lease:
    """One request's use of an instance, for as long as the request lasts. `engine` is
    never missing; `phase()` reports progress, which the manager counts."""

    def __init__(
        self, manager: "ModelManager", inst: Instance, engine: EngineHandle, *, waited: bool
    ) -> None:
        self._manager = manager
        self._inst = inst
        self.engine = engine
        self._phase = Phase.WAITING
        # The request waited for its model to load (it loaded just in time for it).
        self.load_seconds = inst.load_seconds if waited else None

    @property
    def identifier(self) -> str:
        return self._inst.identifier

    @property
    def record(self) -> ModelRecord:
        return self._inst.record

    @property
    def config(self) -> LoadConfig:
        return self._inst.config

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    def phase(self, phase: Phase) -> None:
        if phase is not self._phase:
            self._manager._count_phase(self._inst, self._phase, phase)
            self._phase = phase


@dataclass(frozen=True)
class LoadPlan:
    record: ModelRecord
    config: LoadConfig
    estimate: MemoryEstimate
    available_bytes: int
    allowed_bytes: float

    @property
    def fits(self) -> bool:
        return self.estimate.total_bytes <= self.allowed_bytes


def worker_memory_ceiling(estimate_bytes: int) -> int:
    """A worker's memory ceiling (LoadSpec.memory_limit_bytes): its estimate plus a
    generous margin, so that only a runaway request reaches it (docs/engines.md)."""
    return max(2 * estimate_bytes, estimate_bytes + 2**30)


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        starter: EngineStarter = start_engine,
        memory: Callable[[], int] = available_memory,
        engine_of: Callable[[ModelRecord], str] | None = None,
        on_change: Callable[[], None] | None = None,
        on_crash: Callable[[], None] | None = None,
        defaults_of: DefaultsOf = no_defaults,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock  # monotonic: TTLs, idleness, load times
        self._wall_clock = wall_clock  # epoch seconds: only to report times to clients
        self._starter = starter
        self._memory = memory
        self._engine_of = engine_of or self._engine_for
        self._on_change = on_change or (lambda: None)  # persists manual loads
        self._on_crash = on_crash or (lambda: None)  # counts crashes in the metrics
        self._defaults_of = defaults_of
        self._starting: dict[Instance, asyncio.Future[EngineHandle]] = {}  # engines starting
        self._load_waiters: dict[Instance, int] = {}  # load() calls waiting, per instance
        self._instances: dict[str, Instance] = {}
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- queries ---------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda i: i.identifier)

    def loaded_paths(self) -> dict[str, list[Instance]]:
        """Loaded instances by the model's relative path (for listings)."""
        by_path: dict[str, list[Instance]] = {}
        for inst in self._instances.values():
            if inst.usable:
                by_path.setdefault(inst.record.path, []).append(inst)
        return by_path

    def manual_loads(self) -> list[dict[str, object]]:
        """What `lms load` has loaded, to load again after a restart."""
        return [
            {
                "model": i.record.path,
                "identifier": i.identifier,
                "ttl": i.ttl,
                "context_length": i.config.context_length,
                "gpu_ratio": i.config.gpu_ratio,
                "parallel": i.config.parallel,
                **{name: getattr(i.config, name) for name in ENGINE_SETTINGS},
            }
            for i in self.instances()
            if i.origin == "manual" and i.state is State.LOADED
        ]

    def _changed(self) -> None:
        if not self._closing:
            self._on_change()

    def ttl_remaining(self, inst: Instance) -> float | None:
        if inst.ttl is None:
            return None
        if inst.in_flight:
            return inst.ttl
        return max(0.0, inst.idle_since + inst.ttl - self._clock())

    def last_used_epoch(self, inst: Instance) -> float:
        """When the instance was last used, in epoch seconds (now while it is busy)."""
        idle = 0.0 if inst.in_flight else max(0.0, self._clock() - inst.idle_since)
        return self._wall_clock() - idle

    def _engine_for(self, record: ModelRecord) -> str:
        if self.settings.engine != "auto":
            return self.settings.engine
        return FORMAT_ENGINES[record.format]

    # -- planning --------------------------------------------------------------------------

    def resolve_config(self, record: ModelRecord, request: LoadRequest) -> LoadConfig:
        trained = record.max_context_length
        context = request.context_length or min(
            self.settings.default_context_length, trained or self.settings.default_context_length
        )
        if trained and context > trained:
            raise InvalidRequest(
                f"context length {context} is more than {record.key} supports ({trained})",
                param="context_length",
            )
        if request.gpu_ratio is not None and not 0.0 <= request.gpu_ratio <= 1.0:
            raise InvalidRequest("gpu must be off, max, or a ratio between 0 and 1", param="gpu")
        parallel = request.parallel or self.settings.default_parallel
        if parallel < 1:
            raise InvalidRequest("parallel must be at least 1", param="parallel")
        gpu = 1.0 if request.gpu_ratio is None else request.gpu_ratio
        settings = self._engine_settings(request)
        return LoadConfig(context_length=context, gpu_ratio=gpu, parallel=parallel, **settings)

    def _engine_settings(self, request: LoadRequest) -> dict[str, Any]:
        """The request's engine settings, the `default_*` settings for those it omits;
        a bad value is a 400 naming the field."""
        settings = self.settings
        defaults: dict[str, Any] = {
            "kv_pool": settings.default_kv_pool,
            "flash_attention": settings.default_flash_attention,
            "kv_cache_type_k": settings.default_kv_cache_type_k,
            "kv_cache_type_v": settings.default_kv_cache_type_v,
            "threads": settings.default_threads or None,
            "use_mmap": settings.default_use_mmap,
            "keep_model_in_memory": settings.default_keep_model_in_memory,
            "seed": None if settings.default_seed == -1 else settings.default_seed,
            "offload_kv_cache_to_gpu": settings.default_offload_kv_cache_to_gpu,
        }
        chosen = {
            name: default if getattr(request, name) is None else getattr(request, name)
            for name, default in defaults.items()
        }
        problem = settings_problem(**chosen)
        if problem is not None:
            raise InvalidRequest(problem[1], param=problem[0])
        return chosen

    def with_model_defaults(self, record: ModelRecord, request: LoadRequest) -> LoadRequest:
        """What a load of `record` asks for: `request`, then the model's defaults."""
        return with_defaults(request, self._defaults_of(record)[0])

    def _ttl_for(self, record: ModelRecord, ttl: float | None, origin: Origin) -> float | None:
        """A new instance's idle TTL: the one asked for, else the model's default, else
        the JIT TTL for a JIT load (none for a manual one). Never (inf) is None."""
        if ttl is None:
            ttl = self._defaults_of(record)[1]
        if ttl is None and origin == "jit":
            ttl = self.settings.jit_ttl
        return None if ttl is None or math.isinf(ttl) else ttl

    async def plan(self, name: str, request: LoadRequest) -> LoadPlan:
        return self._plan(await self.store.resolve(name), request)

    def _plan(self, record: ModelRecord, request: LoadRequest) -> LoadPlan:
        if record.error is not None:
            raise LoadFailed(f"{record.path} cannot be loaded: {record.error}")
        config = self.resolve_config(record, self.with_model_defaults(record, request))
        available = self._memory()
        if self.settings.max_model_memory:
            used = sum(i.memory_bytes for i in self._instances.values() if i.usable)
            available = max(0, min(available, self.settings.max_model_memory - used))
        mode: GuardrailMode = self.settings.guardrail  # type: ignore[assignment]
        return LoadPlan(
            record,
            config,
            estimate(record, config),
            available,
            allowed_bytes(available, mode),
        )

    # -- loading ---------------------------------------------------------------------------

    async def load(
        self,
        name: str,
        request: LoadRequest = LoadRequest(),
        *,
        identifier: str | None = None,
        ttl: float | None = None,
        origin: Origin = "manual",
        force: bool = False,
        on_progress: OnLoadProgress | None = None,
    ) -> Instance:
        """Load `name`, or return the instance already loaded with the same settings.
        `ttl`: idle seconds (inf: never; None: the model's default, else none).
        `on_progress(instance, 0..1)` hears how far the load has got, from the value it
        has now (1.0 at once for an instance already loaded). Cancelled while the instance
        is still loading and nobody else waits for it (no other load, no request), the
        load is abandoned: its engine stops and the instance is gone (Ctrl-C in `lms
        load`)."""
        inst = await self._get_or_start(name, request, identifier, ttl, origin, force)
        self._load_waiters[inst] = self._load_waiters.get(inst, 0) + 1
        try:
            if on_progress is not None:
                async for value in inst.progress.follow():
                    on_progress(inst, value)
            await asyncio.shield(inst.loaded)
        except asyncio.CancelledError:
            alone = self._load_waiters[inst] == 1 and inst.in_flight == 0
            if inst.state is State.LOADING and alone:
                log.info("abandoning the load of %s: its caller went away", inst.identifier)
                await self._retire(inst, wait=False)
            raise
        finally:
            self._load_waiters[inst] -= 1
            if not self._load_waiters[inst]:
                del self._load_waiters[inst]
        return inst

    async def _get_or_start(
        self,
        name: str,
        request: LoadRequest,
        identifier: str | None,
        ttl: float | None,
        origin: Origin,
        force: bool,
    ) -> Instance:
        record = await self.store.resolve(name)
        catalog = await self.store.catalog()
        ident = identifier or catalog.public_id(record)
        while (existing := self._instances.get(ident)) is not None:
            if existing.usable:
                conflicts = request.conflicts_with(existing.config)
                if existing.record.path != record.path or conflicts:
                    what = ", ".join(conflicts) or f"model {existing.record.path}"
                    raise InvalidRequest(
                        f"{ident!r} is already loaded with a different {what}; unload it "
                        "first, or load another instance with --identifier",
                        param="identifier",
                    )
                if origin == "manual" and existing.origin == "jit":
                    existing.origin = "manual"  # an explicit load pins it
                if ttl is not None and origin == "manual":
                    existing.ttl = None if math.isinf(ttl) else ttl
                return existing
            await existing.gone.wait()  # draining: load afresh once it is gone
        # No await from the check above to the registration below: concurrent callers
        # for one model must find this instance, never start a second load.
        plan = self._plan(record, request)
        inst = Instance(
            identifier=ident,
            record=plan.record,
            config=plan.config,
            origin=origin,
            ttl=self._ttl_for(record, ttl, origin),
            idle_since=self._clock(),
            memory_bytes=plan.estimate.total_bytes,
        )
        self._instances[ident] = inst
        self._spawn(self._load(inst, plan, force))
        self._changed()
        return inst

    async def _load(self, inst: Instance, plan: LoadPlan, force: bool) -> None:
        started = self._clock()
        starting: asyncio.Future[EngineHandle] | None = None
        try:
            if inst.origin == "jit" and self.settings.auto_evict:
                await self._evict_for_jit(inst)
            if not force and self.settings.guardrail != "off":
                await self._make_room(inst, plan)
            spec = LoadSpec(
                model_path=str(plan.record.abs_path),
                engine=self._engine_of(plan.record),
                context_length=plan.config.context_length,
                gpu_ratio=plan.config.gpu_ratio or 0.0,
                parallel=plan.config.parallel,
                embedding=plan.record.type == "embeddings",
                kv_pool=plan.config.kv_pool,
                flash_attention=plan.config.flash_attention,
                kv_cache_type_k=plan.config.kv_cache_type_k,
                kv_cache_type_v=plan.config.kv_cache_type_v,
                n_threads=plan.config.threads,
                use_mmap=plan.config.use_mmap,
                use_mlock=plan.config.keep_model_in_memory,
                seed=plan.config.seed,
                offload_kqv=plan.config.offload_kv_cache_to_gpu,
                mmproj_path=str(plan.record.mmproj) if plan.record.mmproj else None,
                memory_limit_bytes=(
                    None
                    if force or self.settings.guardrail == "off"
                    else worker_memory_ceiling(plan.estimate.total_bytes)
                ),
            )
            if inst.state is not State.LOADING:  # abandoned while making room
                raise LoadFailed(f"loading {inst.identifier} was cancelled")
            # Its own task, so that abandoning the load stops the engine (_stop_loading).
            starting = asyncio.ensure_future(
                self._starter(spec, self._engine_exited, inst.progress.update)
            )
            self._starting[inst] = starting
            try:
                engine = await starting
            finally:
                self._starting.pop(inst, None)
        except BaseException as exc:
            self._load_failed(inst, exc)
            task = asyncio.current_task()
            if not isinstance(exc, Exception) and task is not None and task.cancelling():
                raise
            return
        if inst.state is not State.LOADING:  # unloaded while loading
            await engine.close()
            self._load_failed(inst, LoadFailed(f"{inst.identifier} was unloaded while loading"))
            return
        inst.engine = engine
        inst.load_seconds = self._clock() - started
        inst.idle_since = self._clock()
        measured = engine.memory_bytes()
        if measured:
            inst.memory_bytes = measured
        if engine.info.ignored_settings:
            log.warning(
                "%s: the %s engine ignores these load settings: %s",
                inst.identifier,
                engine.info.runtime_name,
                ", ".join(engine.info.ignored_settings),
            )
        inst.move_to(State.LOADED)
        inst.loaded.set_result(None)
        inst.progress.update(1.0)
        inst.progress.finish()
        log.info(
            "loaded %s in %.2fs (%s)",
            inst.identifier,
            inst.load_seconds,
            format_bytes(inst.memory_bytes),
        )
        self._wake.set()
        self._changed()

    def _load_failed(self, inst: Instance, exc: BaseException) -> None:
        """A load ended without an engine: failed, or abandoned (then already UNLOADED)."""
        if inst.state is State.LOADING:
            inst.move_to(State.FAILED)
        if self._instances.get(inst.identifier) is inst:
            del self._instances[inst.identifier]
        if isinstance(exc, LmsError):
            error: LmsError = exc
        elif isinstance(exc, Exception):
            error = LoadFailed(f"loading failed: {exc}")
        else:
            error = LoadFailed(f"loading {inst.identifier} was cancelled")
        if not inst.loaded.done():
            inst.loaded.set_exception(error)
            inst.loaded.exception()  # retrieved: no "never retrieved" warning if unawaited
        inst.progress.finish()
        self._changed()

    def _stop_loading(self, inst: Instance) -> None:
        """An instance that is no longer wanted while it loads: stop its engine's start
        (which leaves no worker behind) and end its progress."""
        starting = self._starting.get(inst)
        if starting is not None:
            starting.cancel()
        inst.progress.finish()

    async def _evict_for_jit(self, inst: Instance) -> None:
        others = [i.facts() for i in self._instances.values() if i.state is State.LOADED]
        for ident in auto_evict_victims(others, loading=inst.identifier):
            log.info("auto-evict: unloading JIT model %s to load %s", ident, inst.identifier)
            await self._retire(self._instances[ident], wait=False)

    async def _make_room(self, inst: Instance, plan: LoadPlan) -> None:
        loaded = [
            i.facts() for i in self._instances.values() if i.state is State.LOADED and i is not inst
        ]
        victims = memory_victims(
            loaded,
            needed_bytes=plan.estimate.total_bytes,
            available_bytes=int(plan.allowed_bytes),
        )
        if victims is None:
            raise InsufficientMemory(
                f"not enough memory to load {plan.record.key}: it needs about "
                f"{format_bytes(plan.estimate.total_bytes)}, and the {self.settings.guardrail} "
                f"guardrail allows {format_bytes(plan.allowed_bytes)} of the "
                f"{format_bytes(plan.available_bytes)} available; unload a model, use a "
                "smaller context length, or load with --force",
                needed_bytes=plan.estimate.total_bytes,
                available_bytes=plan.available_bytes,
            )
        for ident in victims:
            log.info("memory guardrail: unloading idle JIT model %s", ident)
            await self._retire(self._instances[ident], wait=True)

    # -- leases ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self,
        name: str,
        *,
        ttl: float | None = None,
        request: LoadRequest = LoadRequest(),
        on_progress: OnLoadProgress | None = None,
    ) -> AsyncIterator[Lease]:
        """An engine of a loaded instance of `name` for one request, loading it just in
        time when allowed. `on_progress(instance, 0..1)` hears the load when the lease has
        to wait for one (as `load` tells it)."""
        inst = self._find_usable(name)
        if inst is None:
            if not self.settings.jit_loading:
                raise ModelNotLoaded(
                    f"model {name!r} is not loaded and just-in-time loading is off; "
                    f"load it with `lms load {name}`"
                )
            inst = await self._get_or_start(name, request, None, ttl, "jit", False)
        capacity = inst.config.parallel + self.settings.max_queue
        if inst.in_flight >= capacity:
            raise ServerBusy(
                f"{inst.identifier} is busy: {inst.config.parallel} requests running and "
                f"{self.settings.max_queue} waiting; retry shortly",
                retry_after=1,
            )
        # Count the request before waiting for the load, so nothing can expire it.
        inst.in_flight += 1
        self._wake.set()
        lease: Lease | None = None
        waited = inst.state is State.LOADING
        try:
            if on_progress is not None and waited:
                async for value in inst.progress.follow():
                    on_progress(inst, value)
            await asyncio.shield(inst.loaded)
            lease = Lease(self, inst, self._engine_of_loaded(inst), waited=waited)
            yield lease
        finally:
            if lease is not None:
                lease.phase(Phase.WAITING)
            inst.in_flight -= 1
            if inst.in_flight == 0:
                inst.idle_since = self._clock()
                if inst.state is State.DRAINING:
                    self._spawn(self._close(inst))
            self._wake.set()

    def _engine_of_loaded(self, inst: Instance) -> EngineHandle:
        """The engine of an instance whose load finished; it may have died since."""
        if inst.engine is not None and inst.state in (State.LOADED, State.DRAINING):
            return inst.engine
        if inst.state is State.FAILED:
            raise WorkerCrashed(None, inst.failure or "it failed")
        raise ModelUnloaded(f"{inst.identifier} was unloaded")

    def _count_phase(self, inst: Instance, old: Phase, new: Phase) -> None:
        for phase, step in ((old, -1), (new, +1)):
            if phase is Phase.PROMPT:
                inst.prompt_processing += step
            elif phase is Phase.GENERATING:
                inst.generating += step

    def _find_usable(self, name: str) -> Instance | None:
        exact = self._instances.get(name)
        if exact is not None and exact.usable:
            return exact
        wanted = name.strip().lower()
        candidates = [
            i for i in self._instances.values() if i.usable and wanted in _names_of(i.record)
        ]
        return min(candidates, key=lambda i: i.in_flight, default=None)

    # -- unloading -------------------------------------------------------------------------

    async def unload(self, identifier: str) -> Instance:
        inst = self._instances.get(identifier)
        if inst is None or (not inst.usable and inst.state is not State.DRAINING):
            loaded = ", ".join(sorted(self._instances)) or "none"
            raise ModelNotFound(
                f"no loaded model with identifier {identifier!r} (loaded: {loaded})"
            )
        await self._retire(inst, wait=True)
        return inst

    async def unload_all(self) -> list[str]:
        idents = [i.identifier for i in self._instances.values() if i.usable]
        await asyncio.gather(*(self._retire(self._instances[i], wait=True) for i in idents))
        return idents

    async def _retire(self, inst: Instance, *, wait: bool) -> None:
        """Unload now if idle, else drain: no new requests, unload when the last ends."""
        if inst.state is State.LOADING:
            inst.move_to(State.UNLOADED)
            self._instances.pop(inst.identifier, None)
            self._stop_loading(inst)
        elif inst.state is State.LOADED:
            inst.move_to(State.DRAINING)
            if inst.in_flight == 0:
                self._spawn(self._close(inst))
        self._changed()
        if wait:
            await inst.gone.wait()

    async def _close(self, inst: Instance) -> None:
        if inst.state is not State.DRAINING:
            return
        engine, inst.engine = inst.engine, None
        if engine is not None:
            await engine.close()
        if inst.state is State.DRAINING:
            inst.move_to(State.UNLOADED)
        if self._instances.get(inst.identifier) is inst:
            del self._instances[inst.identifier]
        log.info("unloaded %s", inst.identifier)
        self._changed()

    def _engine_exited(self, engine: object, reason: str) -> None:
        for inst in list(self._instances.values()):
            if inst.engine is engine:
                log.error(
                    "model %s: %s; it will load again on the next request", inst.identifier, reason
                )
                inst.engine = None
                inst.failure = reason
                inst.move_to(State.FAILED)
                del self._instances[inst.identifier]
                self._on_crash()
                self._changed()

    # -- the idle-TTL reaper ---------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="ttl-reaper")

    async def _reap_forever(self) -> None:
        while True:
            self._wake.clear()
            facts = [i.facts() for i in self._instances.values() if i.state is State.LOADED]
            for ident in expired(facts, self._clock()):
                log.info("unloading %s: idle TTL expired", ident)
                await self._retire(self._instances[ident], wait=False)
            deadline = next_deadline(
                i.facts() for i in self._instances.values() if i.state is State.LOADED
            )
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def poke(self) -> None:
        """Re-check TTLs now (tests with a controllable clock call this)."""
        self._wake.set()

    def _spawn(self, coro: "Awaitable[None]") -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for inst in list(self._instances.values()):
            if inst.state is State.LOADING:
                inst.move_to(State.UNLOADED)
                self._stop_loading(inst)
        engines = [i.engine for i in self._instances.values() if i.engine is not None]
        await asyncio.gather(*(e.close() for e in engines), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._instances.clear()


def _names_of(record: ModelRecord) -> set[str]:
    names = {
        record.key,
        record.variant_key,
        record.path.lower(),
        f"{record.publisher}/{record.key}".lower(),
    }
    if record.repo:
        names.add(f"{record.publisher}/{record.repo}".lower())
    return names
