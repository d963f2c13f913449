"""Loading and unloading: LM Studio's `/api/v1/models/load|unload` (what `lms load` and
`lms unload` call) and the listing of loaded instances behind `lms ps`."""

import math
from collections.abc import Awaitable

from aiohttp import web

from daemon.catalog import Catalog, ModelRecord, to_ls_json
from daemon.compat.fields import optional, required
from daemon.compat.load_settings import parse_load_settings
from daemon.errors import AmbiguousModel, ModelNotFound
from daemon.http.errors import read_json_object
from daemon.http.keys import MANAGER, MODELS
from daemon.http.load_stream import stream_load
from daemon.http.routes import ADMIN, Route
from daemon.instance import ENGINE_SETTINGS, Instance
from daemon.manager import ModelManager, OnLoadProgress
from daemon.memory import kv_cells
from lms.api import lifecycle as api
from lms.api.models import ModelInfo


def _ms(seconds: float | None) -> int | None:
    """Seconds as whole milliseconds; None when unset or never (an infinite TTL)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return int(seconds * 1000)


def instance_json(manager: ModelManager, catalog: Catalog, inst: Instance) -> api.InstanceInfo:
    """One loaded instance, in the shape of LM Studio's `lms ps --json` plus our extras."""
    info = inst.engine.info if inst.engine is not None else None
    remaining = manager.ttl_remaining(inst)
    return {
        **to_ls_json(inst.record, model_key=catalog.public_id(inst.record)),
        "identifier": inst.identifier,
        "instanceReference": inst.reference,
        "state": inst.state.value,
        "status": inst.status,
        "origin": inst.origin,
        "ttlMs": _ms(inst.ttl),
        "ttlRemainingMs": _ms(remaining),
        "lastUsedTime": int(manager.last_used_epoch(inst) * 1000),
        "contextLength": inst.config.context_length,
        "parallel": inst.config.parallel,
        "inFlight": inst.in_flight,
        "queued": max(0, inst.in_flight - inst.config.parallel),
        "memoryBytes": inst.memory_bytes,
        "loadTimeSeconds": round(inst.load_seconds, 3),
        "pid": inst.engine.pid if inst.engine is not None else None,
        "device": "GPU" if info is not None and info.n_gpu_layers else "CPU",
        "gpuLayers": info.n_gpu_layers if info is not None else 0,
        "loadSettings": {name: getattr(inst.config, name) for name in ENGINE_SETTINGS},
        "ignoredSettings": list(info.ignored_settings) if info is not None else [],
    }


async def load(request: web.Request) -> web.StreamResponse:
    body = await read_json_object(request)
    model = required(body, "model", str)
    # One parser for the load API and the per-model defaults (compat/load_settings.py).
    settings = parse_load_settings(body)
    load_request, ttl = settings.request, settings.ttl
    identifier = optional(body, "identifier", str)
    manager = request.app[MANAGER]
    if optional(body, "estimate_only", bool):
        plan = await manager.plan(model, load_request)
        estimate: api.EstimateReply = {
            "model": plan.record.key,
            "context_length": plan.config.context_length,
            "gpu_ratio": plan.config.gpu_ratio,
            "parallel": plan.config.parallel,
            "kv_pool": plan.config.kv_pool,
            "kv_cells": kv_cells(plan.config),
            "kv_cache_type_k": plan.config.kv_cache_type_k,
            "kv_cache_type_v": plan.config.kv_cache_type_v,
            "estimate": {
                "weights_bytes": plan.estimate.weights_bytes,
                "kv_cache_bytes": plan.estimate.kv_cache_bytes,
                "compute_bytes": plan.estimate.compute_bytes,
                "runtime_bytes": plan.estimate.runtime_bytes,
                "overhead_bytes": plan.estimate.overhead_bytes,
                "total_bytes": plan.estimate.total_bytes,
            },
            "available_bytes": plan.available_bytes,
            "allowed_bytes": int(min(plan.allowed_bytes, 2**62)),
            "guardrail": manager.settings.guardrail,
            "passes_guardrails": plan.fits or manager.settings.guardrail == "off",
        }
        return web.json_response(estimate)
    before = {i.identifier: i for i in manager.instances()}

    def start(on_progress: OnLoadProgress | None) -> Awaitable[Instance]:
        return manager.load(
            model,
            load_request,
            identifier=identifier,
            ttl=ttl,  # inf (-1): never unload; None: the model's default TTL, else none
            force=bool(optional(body, "force", bool)),
            on_progress=on_progress,
        )

    async def reply_of(inst: Instance) -> api.LoadReply:
        catalog = await request.app[MODELS].catalog()
        return {
            "type": "embedding" if inst.record.type == "embeddings" else "llm",
            "instance_id": inst.identifier,
            "load_time_seconds": round(inst.load_seconds, 3),
            "status": "loaded",
            "already_loaded": before.get(inst.identifier) is inst,
            "instance": instance_json(manager, catalog, inst),
        }

    if optional(body, "stream", bool):
        return await stream_load(request, start, reply_of)
    return web.json_response(await reply_of(await start(None)))


async def unload(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    manager = request.app[MANAGER]
    if optional(body, "all", bool):
        unloaded: api.UnloadAllReply = {"unloaded": await manager.unload_all()}
        return web.json_response(unloaded)
    identifier = required(body, "instance_id", str)
    await manager.unload(identifier)
    reply: api.UnloadReply = {"instance_id": identifier}
    return web.json_response(reply)


async def instances(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    catalog = await request.app[MODELS].catalog()
    listing: list[api.InstanceInfo] = [
        instance_json(manager, catalog, i) for i in manager.instances()
    ]
    return web.json_response(listing)


async def match(request: web.Request) -> web.Response:
    """For `lms load`: the exact model a name resolves to, else the fuzzy candidates."""
    query = request.query.get("q", "")
    exact_path = request.query.get("exact") == "1"
    catalog = await request.app[MODELS].catalog(max_age=0)
    usable = [r for r in catalog.records if r.error is None]
    if exact_path:
        found = [r for r in usable if r.path == query]
        reply: api.MatchReply = {
            "exact": _ls(catalog, found[0]) if found else None,
            "candidates": [],
        }
        return web.json_response(reply)
    try:
        record = catalog.resolve(query) if query else None
    except (ModelNotFound, AmbiguousModel):  # let the user pick among the candidates
        record = None
    if record is not None and record.error is None:
        reply = {"exact": _ls(catalog, record), "candidates": []}
        return web.json_response(reply)
    candidates = [r for r in catalog.search(query) if r.error is None] if query else usable
    reply = {"exact": None, "candidates": [_ls(catalog, r) for r in candidates]}
    return web.json_response(reply)


def _ls(catalog: Catalog, record: ModelRecord) -> ModelInfo:
    return to_ls_json(record, model_key=catalog.public_id(record))


def routes() -> list[Route]:
    return [
        Route("POST", api.LOAD_PATH, load, ADMIN),
        Route("POST", api.UNLOAD_PATH, unload, ADMIN),
        Route("GET", api.INSTANCES_PATH, instances, ADMIN),
        Route("GET", api.MATCH_PATH, match, ADMIN),
    ]
