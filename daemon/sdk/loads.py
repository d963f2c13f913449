"""Loading and unloading over the SDK (`getOrLoad`, `loadModel`, `unloadModel`), through
the manager like `lms load` and JIT loads. Without an admin key an SDK load is a
just-in-time load (docs/sdk.md, "Access")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from daemon.errors import Forbidden, InvalidRequest, LmsError, ModelNotFound
from daemon.eviction import auto_evict_victims
from daemon.instance import Instance, LoadRequest, State
from daemon.sdk import remote, translate
from daemon.sdk.context import (
    Channel,
    Context,
    as_dict,
    instance_info,
    string_field,
)


async def unload_model(ctx: Context, param: Any) -> Any:
    identifier = string_field(as_dict(param, "parameter"), "identifier")
    inst = next((i for i in ctx.manager.instances() if i.identifier == identifier), None)
    if inst is None:
        refusal = remote.not_unloadable(ctx, identifier)
        if refusal is not None:
            raise refusal
    elif inst.origin != "jit" and not ctx.admin:
        raise Forbidden(
            f"{identifier} was loaded with `lms load` (or pinned); unloading it over the SDK "
            "needs an admin API key (or use `lms unload`)"
        )
    await ctx.manager.unload(identifier)
    return None


async def _follow_load(
    channel: Channel,
    loading: asyncio.Future[Instance],
    progress: asyncio.Queue[float],
    progress_type: str,
) -> Instance:
    """Waits for `loading`, sending the progress (0..1) it reports on the way."""
    last = 0.0
    while not loading.done() or not progress.empty():
        getter = asyncio.ensure_future(progress.get())
        cancel = asyncio.ensure_future(channel.cancelled.wait())
        await asyncio.wait((getter, loading, cancel), return_when=asyncio.FIRST_COMPLETED)
        cancel.cancel()
        if channel.cancelled.is_set() and not loading.done():
            getter.cancel()
            raise LmsError("the load was cancelled")
        if not getter.done():
            getter.cancel()
            continue
        value = getter.result()
        if value > last:
            last = value
            await channel.send({"type": progress_type, "progress": value})
    return await loading


async def _load(
    ctx: Context,
    channel: Channel,
    name: str,
    request: LoadRequest,
    *,
    identifier: str | None,
    ttl: float | None,
    manual: bool,
    get_or_load: bool,
) -> None:
    try:
        record = await ctx.store.resolve(name)
    except ModelNotFound:
        refusal = remote.not_loadable(ctx, name)
        if refusal is not None:
            raise refusal from None
        raise
    if (record.type == "embeddings") != (ctx.namespace == "embedding"):
        raise InvalidRequest(
            f"{name} is {'an embedding model' if record.type == 'embeddings' else 'an LLM'}: "
            f"load it through the {'embedding' if record.type == 'embeddings' else 'llm'} "
            "namespace",
            param="modelKey",
        )
    catalog = await ctx.store.catalog()
    key = catalog.public_id(record)
    info = translate.model_info(record, key)
    # getOrLoad: startLoading {info}, loadProgress, loadSuccess; loadModel: resolved
    # {info}, progress, success (the shapes both SDKs check).
    if not get_or_load:
        await channel.send({"type": "resolved", "info": info})
    if not manual and not ctx.manager.settings.jit_loading:
        raise Forbidden(
            "just-in-time loading is off, so loading over the SDK needs an admin API key "
            "(or `lms load`)"
        )
    ident = identifier or key
    evicted: list[dict[str, Any]] = []  # the JIT models this JIT load will unload first
    if not manual and ctx.manager.settings.auto_evict:
        loaded = [i for i in ctx.manager.instances() if i.state is State.LOADED]
        victims = auto_evict_victims([i.facts() for i in loaded], loading=ident)
        evicted = [await instance_info(ctx, i) for i in loaded if i.identifier in victims]
    progress: asyncio.Queue[float] = asyncio.Queue()
    loading = asyncio.ensure_future(
        ctx.manager.load(
            name,
            request,
            identifier=identifier,
            ttl=ttl,
            origin="manual" if manual else "jit",
            on_progress=lambda _, value: progress.put_nowait(value),
        )
    )
    if get_or_load:
        await channel.send({"type": "startLoading", "identifier": ident, "info": info})
        for other_info in evicted:
            await channel.send({"type": "unloadingOtherJITModel", "info": other_info})
    progress_type = "loadProgress" if get_or_load else "progress"
    try:
        inst = await _follow_load(channel, loading, progress, progress_type)
    finally:
        if not loading.done():  # the client went away: the manager abandons the load
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
    done_type = "loadSuccess" if get_or_load else "success"
    await channel.send({"type": done_type, "info": await instance_info(ctx, inst)})


def _load_request(ctx: Context, param: dict[str, Any]) -> LoadRequest:
    config = translate.flatten_stack(param.get("loadConfigStack"))
    return translate.load_request(
        config, "embedding.load" if ctx.namespace == "embedding" else "llm.load"
    )


async def get_or_load(ctx: Context, param: Any, channel: Channel) -> None:
    param = as_dict(param, "creationParameter")
    name = string_field(param, "identifier")
    _, target = await remote.find(ctx, {"type": "query", "query": {"identifier": name}})
    if isinstance(target, remote.RemoteModel):  # served upstream: nothing to load here
        await channel.send({"type": "alreadyLoaded", "info": remote.instance_info(target)})
        return
    if target is not None:
        await channel.send({"type": "alreadyLoaded", "info": await instance_info(ctx, target)})
        return
    ttl = translate.ttl_seconds(param.get("loadTtlMs"), "loadTtlMs")
    request = _load_request(ctx, param)
    await _load(
        ctx, channel, name, request, identifier=None, ttl=ttl, manual=False, get_or_load=True
    )


async def load_model(ctx: Context, param: Any, channel: Channel) -> None:
    param = as_dict(param, "creationParameter")
    name = string_field(param, "modelKey")
    identifier = param.get("identifier")
    if identifier is not None and (not isinstance(identifier, str) or not identifier):
        raise InvalidRequest("'identifier' must be a non-empty string", param="identifier")
    ttl = translate.ttl_seconds(param.get("ttlMs"), "ttlMs")
    await _load(
        ctx,
        channel,
        name,
        _load_request(ctx, param),
        identifier=identifier,
        ttl=ttl,
        manual=ctx.admin,
        get_or_load=False,
    )
