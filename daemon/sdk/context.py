"""What every SDK endpoint shares: the connection's context, a channel as an endpoint
sees it, and finding the model a specifier names among the loaded instances."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import InvalidRequest, ModelNotFound
from daemon.instance import Instance, State
from daemon.manager import ModelManager
from daemon.model_store import ModelStore
from daemon.prediction.service import PredictionService
from daemon.remote.pool import UpstreamPool
from daemon.remote.router import Router
from daemon.sdk import translate
from daemon.sdk.files import UploadedFiles


class NoModelMatching(ModelNotFound):
    """No loaded model matches a specifier (the SDK's generic.noModelMatchingQuery)."""


@dataclass
class Context:
    namespace: str
    manager: ModelManager
    store: ModelStore
    predictions: PredictionService
    version: str
    admin: bool  # an admin key, or the owner's Unix socket
    files: UploadedFiles  # the daemon's one store of uploaded images
    upstreams: UpstreamPool  # remote models (docs/scale-out.md)

    @property
    def router(self) -> Router:
        """The routing rules the prediction service leases by (stateless: cheap to make)."""
        return Router(self.manager, self.upstreams)


@dataclass
class Channel:
    """One open channel, as an endpoint sees it."""

    send: Callable[[dict[str, Any]], Awaitable[None]]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


Rpc = Callable[[Context, Any], Awaitable[Any]]
ChannelHandler = Callable[[Context, Any, Channel], Awaitable[None]]


# -- helpers ----------------------------------------------------------------------------------


def as_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be an object", param=what)
    return value


def string_field(param: dict[str, Any], name: str) -> str:
    value = param.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def kind_matches(inst: Instance, namespace: str) -> bool:
    embedding = inst.record.type == "embeddings"
    return embedding if namespace == "embedding" else not embedding


def loaded_instances(ctx: Context) -> list[Instance]:
    return [
        i
        for i in ctx.manager.instances()
        if i.state is State.LOADED and kind_matches(i, ctx.namespace)
    ]


def context_length(inst: Instance) -> int:
    info = inst.engine.info if inst.engine is not None else None
    return info.context_length if info is not None else inst.config.context_length


async def instance_info(ctx: Context, inst: Instance) -> dict[str, Any]:
    catalog = await ctx.store.catalog()
    return translate.instance_info(
        inst.record,
        catalog.public_id(inst.record),
        inst.identifier,
        inst.reference,
        context_length(inst),
    )


def no_model(ctx: Context, query: Any) -> NoModelMatching:
    loaded = [i.identifier for i in loaded_instances(ctx)]
    exc = NoModelMatching(
        f"No loaded {ctx.namespace} model matches {query!r} (loaded: {', '.join(loaded) or 'none'})"
    )
    exc.query = query if isinstance(query, dict) else {}  # type: ignore[attr-defined]
    exc.loaded = loaded  # type: ignore[attr-defined]
    return exc


def specified(ctx: Context, specifier: Any) -> tuple[str, Instance | None]:
    """A model specifier: (the name to lease for a query by identifier or path, the
    loaded instance it names if any). An empty query means any loaded model."""
    spec = as_dict(specifier, "specifier")
    if spec.get("type") == "instanceReference":
        ref = spec.get("instanceReference")
        for inst in loaded_instances(ctx):
            if inst.reference == ref:
                return inst.identifier, inst
        raise no_model(ctx, {"instanceReference": ref})
    query = as_dict(spec.get("query"), "query") if spec.get("type") == "query" else spec
    name = query.get("identifier") or query.get("path")
    if name is None:
        loaded = loaded_instances(ctx)
        if not loaded:
            raise no_model(ctx, query)
        return loaded[0].identifier, loaded[0]
    if not isinstance(name, str):
        raise InvalidRequest("the model query's identifier must be a string", param="specifier")
    for inst in loaded_instances(ctx):
        if name in (inst.identifier, inst.record.path, inst.record.key):
            return inst.identifier, inst
    return name, None
