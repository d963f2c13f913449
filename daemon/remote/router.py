"""One lease for a model name, whichever backend serves it: the manager's lease of a
local instance, or a lease of the model's remote handle, chosen by the model's routing
policy (policy.py). The prediction service asks this, never the manager directly, so
every API surface reaches remote models the same way it reaches local ones."""

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from daemon.catalog import ModelRecord
from daemon.engines.base import EngineInfo
from daemon.engines.handle import EngineHandle
from daemon.errors import AmbiguousModel, LmsError, ModelNotFound, UpstreamUnavailable
from daemon.instance import LoadRequest
from daemon.manager import ModelManager, OnLoadProgress, Phase
from daemon.remote.engine import RemoteHandle
from daemon.remote.policy import DEFAULT_POLICY, Policy, falls_through, route_order
from daemon.remote.pool import UpstreamPool

log = logging.getLogger(__name__)


class ModelLease(Protocol):
    """What a request holds while it uses a model (manager.Lease is one)."""

    engine: EngineHandle
    load_seconds: float | None

    @property
    def identifier(self) -> str: ...

    @property
    def record(self) -> ModelRecord: ...

    @property
    def info(self) -> EngineInfo: ...

    def phase(self, phase: Phase) -> None: ...


def remote_record(key: str, upstreams: list[str], *, embedding: bool = False) -> ModelRecord:
    """The record a remote model is known by (it has no file here)."""
    path = f"remote/{upstreams[0] if upstreams else 'none'}/{key}"
    return ModelRecord(
        key=key,
        path=path,
        abs_path=Path("/", path),
        models_dir=Path("/"),
        publisher=upstreams[0] if upstreams else "remote",
        repo=None,
        format="remote",
        type="embeddings" if embedding else "llm",
        arch=None,
        quantization=None,
        max_context_length=None,
        size_bytes=0,
        params_string=None,
        # Tools go to the upstream as they are; its tool calls come back as text the
        # prediction service's parser reads (translate.py).
        capabilities=("tool_use",),
        display_name=key,
        files=(),
    )


def looks_like_embedding(key: str) -> bool:
    return "embed" in key.lower()


class RemoteLease:
    def __init__(self, pool: UpstreamPool, key: str) -> None:
        names = [u.name for u in pool.serving(key)]
        self._record = remote_record(key, names, embedding=looks_like_embedding(key))
        self.engine: EngineHandle = RemoteHandle(pool, key)
        self.load_seconds: float | None = None

    @property
    def identifier(self) -> str:
        return self._record.key

    @property
    def record(self) -> ModelRecord:
        return self._record

    @property
    def info(self) -> EngineInfo:
        return self.engine.info

    def phase(self, phase: Phase) -> None:
        return None


class Router:
    def __init__(self, manager: ModelManager, pool: UpstreamPool) -> None:
        self._manager = manager
        self._pool = pool

    def policy_of(self, name: str) -> Policy:
        return self._pool.store.policies.get(name, DEFAULT_POLICY)

    async def remote_first(self, name: str) -> bool:
        """Whether a request for `name` goes to an upstream first (its policy, and whether
        it is on disk here): what the SDK shows as a remote model, served, never loaded."""
        if not self._pool.serves(name):
            return False
        order = route_order(self.policy_of(name), local=await self._on_disk(name), remote=True)
        return order[:1] == ["remote"]

    async def _on_disk(self, name: str) -> bool:
        # The last snapshot, not a forced rescan: a remote-only key must not cost a scan
        # of the models folders on every request.
        catalog = await self._manager.store.catalog()
        try:
            catalog.resolve(name)
        except (ModelNotFound, AmbiguousModel):
            return any(i.identifier == name and i.usable for i in self._manager.instances())
        return True

    @contextlib.asynccontextmanager
    async def lease(
        self,
        name: str,
        *,
        ttl: float | None = None,
        request: LoadRequest = LoadRequest(),
        on_progress: OnLoadProgress | None = None,
    ) -> AsyncIterator[ModelLease]:
        local_lease = functools.partial(
            self._manager.lease, name, ttl=ttl, request=request, on_progress=on_progress
        )
        if not self._pool.serves(name):
            async with local_lease() as local:
                yield local
            return
        policy = self.policy_of(name)
        order = route_order(policy, local=await self._on_disk(name), remote=True)
        if not order:  # local_only, and not on disk
            async with local_lease() as local:
                yield local
            return
        for position, backend in enumerate(order):
            stack = contextlib.AsyncExitStack()
            try:
                if backend == "local":
                    chosen: ModelLease = await stack.enter_async_context(local_lease())
                else:
                    if not self._pool.available(name):
                        names = ", ".join(u.name for u in self._pool.serving(name))
                        raise UpstreamUnavailable(
                            f"no upstream can serve {name!r} now ({names}): every one is "
                            "full or its circuit is open"
                        )
                    chosen = RemoteLease(self._pool, name)
            except LmsError as exc:
                await stack.aclose()
                if position + 1 < len(order) and falls_through(policy, backend, exc):
                    log.info(
                        "%s: %s backend cannot serve (%s); trying %s (%s)",
                        name,
                        backend,
                        exc,
                        order[position + 1],
                        policy,
                    )
                    continue
                raise
            async with stack:
                yield chosen
            return
