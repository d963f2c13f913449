"""What each SDK endpoint does, through the manager (loads, listings, unloads) and the
prediction service (predictions, embeddings), like every other surface. An RPC endpoint
returns its result; a channel endpoint sends messages on its channel and returns when
it is done (session.py closes the channel then, or reports what it raised).

Access (docs/sdk.md, docs/security.md): the connection is at the inference level. What
an inference caller can already do over HTTP it may do here: predict, embed, list, and
load *just in time* (getOrLoad, and loadModel without an admin key become JIT loads,
with a TTL and auto-evict, and only while JIT loading is on). Pinning a model (a manual
load) and unloading anything but a JIT-loaded instance need an admin key, as
`/api/v1/models/load|unload` do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import Forbidden, InvalidRequest, LmsError, ModelNotFound
from daemon.instance import Instance, LoadRequest, State
from daemon.manager import ModelManager
from daemon.model_store import ModelStore
from daemon.prediction.service import PredictionService, template_messages
from daemon.prediction.types import (
    EmbeddingRequest,
    PredictionDone,
    PredictionFailed,
    PromptProgress,
    ReasoningFragment,
    TextFragment,
    ToolCallEnded,
    ToolCallFailed,
    ToolCallStarted,
)
from daemon.sdk import translate
from daemon.sdk.protocol import error_of

log = logging.getLogger(__name__)


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


@dataclass
class Channel:
    """One open channel, as an endpoint sees it."""

    send: Callable[[dict[str, Any]], Awaitable[None]]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


Rpc = Callable[[Context, Any], Awaitable[Any]]
ChannelHandler = Callable[[Context, Any, Channel], Awaitable[None]]


# -- helpers ----------------------------------------------------------------------------------


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be an object", param=what)
    return value


def _string(param: dict[str, Any], name: str) -> str:
    value = param.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def _kind_matches(inst: Instance, namespace: str) -> bool:
    embedding = inst.record.type == "embeddings"
    return embedding if namespace == "embedding" else not embedding


def _loaded(ctx: Context) -> list[Instance]:
    return [
        i
        for i in ctx.manager.instances()
        if i.state is State.LOADED and _kind_matches(i, ctx.namespace)
    ]


def _context_length(inst: Instance) -> int:
    info = inst.engine.info if inst.engine is not None else None
    return info.context_length if info is not None else inst.config.context_length


async def _instance_info(ctx: Context, inst: Instance) -> dict[str, Any]:
    catalog = await ctx.store.catalog()
    return translate.instance_info(
        inst.record,
        catalog.public_id(inst.record),
        inst.identifier,
        inst.reference,
        _context_length(inst),
    )


def _no_model(ctx: Context, query: Any) -> NoModelMatching:
    loaded = [i.identifier for i in _loaded(ctx)]
    exc = NoModelMatching(
        f"No loaded {ctx.namespace} model matches {query!r} (loaded: {', '.join(loaded) or 'none'})"
    )
    exc.query = query if isinstance(query, dict) else {}  # type: ignore[attr-defined]
    exc.loaded = loaded  # type: ignore[attr-defined]
    return exc


def _specified(ctx: Context, specifier: Any) -> tuple[str | None, Instance | None]:
    """A model specifier: (the name to lease for a query by identifier or path, the
    loaded instance it names if any). An empty query means any loaded model."""
    spec = _dict(specifier, "specifier")
    if spec.get("type") == "instanceReference":
        ref = spec.get("instanceReference")
        for inst in _loaded(ctx):
            if inst.reference == ref:
                return inst.identifier, inst
        raise _no_model(ctx, {"instanceReference": ref})
    query = _dict(spec.get("query"), "query") if spec.get("type") == "query" else spec
    name = query.get("identifier") or query.get("path")
    if name is None:
        loaded = _loaded(ctx)
        if not loaded:
            raise _no_model(ctx, query)
        return loaded[0].identifier, loaded[0]
    if not isinstance(name, str):
        raise InvalidRequest("the model query's identifier must be a string", param="specifier")
    for inst in _loaded(ctx):
        if name in (inst.identifier, inst.record.path, inst.record.key):
            return inst.identifier, inst
    return name, None


def _loaded_instance(ctx: Context, specifier: Any) -> Instance:
    _, inst = _specified(ctx, specifier)
    if inst is None:
        raise _no_model(ctx, _dict(specifier, "specifier").get("query"))
    return inst


# -- system -----------------------------------------------------------------------------------


async def list_downloaded(ctx: Context, param: Any) -> Any:
    catalog = await ctx.store.catalog()
    return [
        translate.model_info(r, catalog.public_id(r)) for r in catalog.records if r.error is None
    ]


async def version(ctx: Context, param: Any) -> Any:
    return {"version": ctx.version, "build": 0}


# -- llm and embedding: listings and info -----------------------------------------------------


async def list_loaded(ctx: Context, param: Any) -> Any:
    return [await _instance_info(ctx, i) for i in _loaded(ctx)]


async def get_model_info(ctx: Context, param: Any) -> Any:
    param = _dict(param, "parameter")
    try:
        inst = _loaded_instance(ctx, param.get("specifier"))
    except NoModelMatching:
        if param.get("throwIfNotFound", True):
            raise
        return None
    return await _instance_info(ctx, inst)


async def get_load_config(ctx: Context, param: Any) -> Any:
    inst = _loaded_instance(ctx, _dict(param, "parameter").get("specifier"))
    return translate.load_config(_context_length(inst), inst.config.gpu_ratio, ctx.namespace)


async def count_tokens(ctx: Context, param: Any) -> Any:
    param = _dict(param, "parameter")
    inst = _loaded_instance(ctx, param.get("specifier"))
    text = _string(param, "inputString") if param.get("inputString") != "" else ""
    async with ctx.manager.lease(inst.identifier) as lease:
        return {"tokenCount": await lease.engine.count_tokens(text)}


async def tokenize(ctx: Context, param: Any) -> Any:
    _loaded_instance(ctx, _dict(param, "parameter").get("specifier"))
    raise InvalidRequest(
        "tokenize is not supported by lmsd yet (its engines do not hand out token ids); "
        "countTokens is",
        code="unsupported_endpoint",
    )


async def apply_prompt_template(ctx: Context, param: Any) -> Any:
    param = _dict(param, "parameter")
    inst = _loaded_instance(ctx, param.get("specifier"))
    messages = translate.history_messages(param.get("history"))
    config = translate.flatten_stack(param.get("predictionConfigStack"))
    tools = translate._tools(config.get("llm.prediction.tools"))
    async with ctx.manager.lease(inst.identifier) as lease:
        formatted = await lease.engine.render_chat(
            template_messages(messages), tools.tools if tools else None
        )
    return {"formatted": formatted}


async def embed_string(ctx: Context, param: Any) -> Any:
    param = _dict(param, "parameter")
    name, _ = _specified(ctx, param.get("modelSpecifier"))
    assert name is not None
    text = param.get("inputString")
    if not isinstance(text, str):
        raise InvalidRequest("'inputString' must be a string", param="inputString")
    embedded = await ctx.predictions.embed(EmbeddingRequest(model=name, inputs=(text,)))
    return {"embedding": embedded.vectors[0]}


# -- loading and unloading --------------------------------------------------------------------


async def unload_model(ctx: Context, param: Any) -> Any:
    identifier = _string(_dict(param, "parameter"), "identifier")
    inst = next((i for i in ctx.manager.instances() if i.identifier == identifier), None)
    if inst is not None and inst.origin != "jit" and not ctx.admin:
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
    record = await ctx.store.resolve(name)
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
    progress_type = "loadProgress" if get_or_load else "progress"
    try:
        inst = await _follow_load(channel, loading, progress, progress_type)
    finally:
        if not loading.done():  # the client went away: the manager abandons the load
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading
    done_type = "loadSuccess" if get_or_load else "success"
    await channel.send({"type": done_type, "info": await _instance_info(ctx, inst)})


def _load_request(ctx: Context, param: dict[str, Any]) -> LoadRequest:
    config = translate.flatten_stack(param.get("loadConfigStack"))
    return translate.load_request(
        config, "embedding.load" if ctx.namespace == "embedding" else "llm.load"
    )


async def get_or_load(ctx: Context, param: Any, channel: Channel) -> None:
    param = _dict(param, "creationParameter")
    name = _string(param, "identifier")
    _, inst = _specified(ctx, {"type": "query", "query": {"identifier": name}})
    if inst is not None:
        await channel.send({"type": "alreadyLoaded", "info": await _instance_info(ctx, inst)})
        return
    ttl = translate.ttl_seconds(param.get("loadTtlMs"), "loadTtlMs")
    request = _load_request(ctx, param)
    await _load(
        ctx, channel, name, request, identifier=None, ttl=ttl, manual=False, get_or_load=True
    )


async def load_model(ctx: Context, param: Any, channel: Channel) -> None:
    param = _dict(param, "creationParameter")
    name = _string(param, "modelKey")
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


# -- predict ----------------------------------------------------------------------------------


async def _next_or_cancel(events: Any, cancelled: asyncio.Event) -> Any:
    """The next event, or None once the client cancels (the pending read is cancelled,
    which closes the engine's stream: the generation stops within a token)."""
    if cancelled.is_set():
        return None
    step = asyncio.ensure_future(anext(events))
    stop = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if step.done():
        return step.result()
    step.cancel()
    with contextlib.suppress(BaseException):
        await step
    return None


async def predict(ctx: Context, param: Any, channel: Channel) -> None:
    param = _dict(param, "creationParameter")
    name, _ = _specified(ctx, param.get("modelSpecifier"))
    assert name is not None
    request = translate.predict_request(name, param, ttl=None)
    async with ctx.predictions.predict(request.prediction) as run:
        done: PredictionDone | None = None
        pending_calls: dict[int, bool] = {}
        while True:
            event = await _next_or_cancel(run.events, channel.cancelled)
            if event is None:
                break
            if isinstance(event, PromptProgress):
                await channel.send({"type": "promptProcessingProgress", "progress": event.fraction})
            elif isinstance(event, TextFragment):
                if event.text:
                    await channel.send(translate.fragment(event.text))
            elif isinstance(event, ReasoningFragment):
                await channel.send(translate.fragment(event.text, reasoning="reasoning"))
            elif isinstance(event, ToolCallStarted):
                pending_calls[event.index] = True
                await channel.send({"type": "toolCallGenerationStart"})
            elif isinstance(event, ToolCallEnded):
                pending_calls.pop(event.index, None)
                await channel.send(
                    {
                        "type": "toolCallGenerationEnd",
                        "toolCallRequest": translate.tool_call_request(event.call),
                    }
                )
            elif isinstance(event, ToolCallFailed):
                await channel.send(
                    {"type": "toolCallGenerationFailed", "error": error_of(LmsError(event.reason))}
                )
            elif isinstance(event, PredictionFailed):
                raise event.error
            elif isinstance(event, PredictionDone):
                done = event
                break
        cancelled = done is None
        model = run.model
        catalog = await ctx.store.catalog()
        record = next((r for r in catalog.records if r.path == model.path), None)
        key = catalog.public_id(record) if record is not None else model.model_key
        instance = next(
            (i for i in ctx.manager.instances() if i.identifier == model.identifier), None
        )
        info: dict[str, Any] = (
            translate.model_info(record, key) if record is not None else {"path": model.path}
        )
        info = {
            **info,
            "type": "llm",
            "modelKey": key,
            "identifier": model.identifier,
            "instanceReference": instance.reference if instance is not None else "",
            "contextLength": model.context_length,
        }
        await channel.send(
            {
                "type": "success",
                "stats": translate.stats(done, cancelled=cancelled, gpu_layers=0),
                "modelInfo": info,
                "loadModelConfig": translate.load_config(
                    model.context_length,
                    instance.config.gpu_ratio if instance is not None else 0.0,
                    "llm",
                ),
                "predictionConfig": translate.kv_config(request.config),
            }
        )


# -- files ------------------------------------------------------------------------------------


async def upload_file(ctx: Context, param: Any) -> Any:
    raise InvalidRequest(
        "lmsd cannot take files or images over the SDK yet (no vision support); send text",
        code="unsupported_content",
    )


RPCS: dict[str, dict[str, Rpc]] = {
    "system": {"listDownloadedModels": list_downloaded, "version": version},
    "llm": {
        "listLoaded": list_loaded,
        "getModelInfo": get_model_info,
        "getLoadConfig": get_load_config,
        "unloadModel": unload_model,
        "countTokens": count_tokens,
        "tokenize": tokenize,
        "applyPromptTemplate": apply_prompt_template,
    },
    "embedding": {
        "listLoaded": list_loaded,
        "getModelInfo": get_model_info,
        "getLoadConfig": get_load_config,
        "unloadModel": unload_model,
        "countTokens": count_tokens,
        "tokenize": tokenize,
        "embedString": embed_string,
    },
    "files": {"uploadFileBase64": upload_file},
}

CHANNELS: dict[str, dict[str, ChannelHandler]] = {
    "llm": {"getOrLoad": get_or_load, "loadModel": load_model, "predict": predict},
    "embedding": {"getOrLoad": get_or_load, "loadModel": load_model},
}
