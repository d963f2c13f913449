"""Model listings: LM Studio's `/api/v0/models`, OpenAI's `/v1/models`, and the admin
listing and import behind `lms ls` and `lms import`."""

import os
from pathlib import Path
from typing import cast, get_args

from aiohttp import web

from daemon.catalog import Catalog, ModelRecord, ModelState, to_ls_json, to_v0_dict
from daemon.errors import AmbiguousModel, InvalidRequest, ModelNotFound
from daemon.http import remote_listing
from daemon.http.errors import read_json_object
from daemon.http.keys import MANAGER, MODELS, UPSTREAMS
from daemon.http.routes import ADMIN, INFERENCE, LOCAL, Route
from daemon.importer import ImportMode
from daemon.instance import State
from lms.api import models as api


def _usable(catalog: Catalog) -> list[ModelRecord]:
    return [r for r in catalog.records if r.error is None]


def _created(record: ModelRecord) -> int:
    try:
        return int(record.abs_path.stat().st_mtime)
    except OSError:
        return 0


def _loaded_context(request: web.Request) -> dict[str, int]:
    """The loaded context of each loaded model, by its relative path (the first instance's
    when several are loaded)."""
    out: dict[str, int] = {}
    for path, instances in request.app[MANAGER].loaded_paths().items():
        for inst in instances:
            if inst.state is State.LOADED:
                info = inst.engine.info if inst.engine is not None else None
                out[path] = info.context_length if info else inst.config.context_length
                break
    return out


def _v0_item(record: ModelRecord, catalog: Catalog, loaded: dict[str, int]) -> dict[str, object]:
    context = loaded.get(record.path)
    state: ModelState = "not-loaded" if context is None else "loaded"
    return to_v0_dict(record, state, context, model_id=catalog.public_id(record))


async def v0_list(request: web.Request) -> web.Response:
    catalog = await request.app[MODELS].catalog()
    loaded = _loaded_context(request)
    data = [_v0_item(r, catalog, loaded) for r in _usable(catalog)]
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    for item in data:
        if item["id"] in remote:
            item["remote"] = remote.pop(str(item["id"]))
    data += [remote_listing.v0_item(key, names) for key, names in remote.items()]
    return web.json_response({"object": "list", "data": data})


async def v0_get(request: web.Request) -> web.Response:
    store = request.app[MODELS]
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    wanted = request.match_info["model"]
    if wanted in remote:
        try:
            await store.resolve(wanted)
        except (ModelNotFound, AmbiguousModel):
            return web.json_response(remote_listing.v0_item(wanted, remote[wanted]))
    record = await store.resolve(request.match_info["model"])
    catalog = await store.catalog()
    return web.json_response(_v0_item(record, catalog, _loaded_context(request)))


def _openai_model(ident: str, record: ModelRecord) -> dict[str, object]:
    return {
        "id": ident,
        "object": "model",
        "created": _created(record),
        "owned_by": record.publisher,
    }


async def _v1_models(request: web.Request) -> list[tuple[str, ModelRecord]]:
    """LM Studio's rule: with JIT loading on, every downloaded model (and the loaded
    instances' own identifiers, such as `lms load --identifier`); else only loaded ones."""
    manager = request.app[MANAGER]
    loaded = [(i.identifier, i.record) for i in manager.instances() if i.usable]
    if not manager.settings.jit_loading:
        return loaded
    catalog = await request.app[MODELS].catalog()
    ids = [(catalog.public_id(r), r) for r in _usable(catalog)]
    known = {ident for ident, _ in ids}
    return ids + [(ident, r) for ident, r in loaded if ident not in known]


async def v1_list(request: web.Request) -> web.Response:
    data = [_openai_model(ident, r) for ident, r in await _v1_models(request)]
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    known = {item["id"] for item in data}
    data += [remote_listing.openai_item(k, n) for k, n in remote.items() if k not in known]
    return web.json_response({"object": "list", "data": data})


async def v1_get(request: web.Request) -> web.Response:
    """`client.models.retrieve(id)`: the model object; a 404 for an unknown id."""
    wanted = request.match_info["model"]
    listed = await _v1_models(request)
    for ident, record in listed:
        if ident == wanted:
            return web.json_response(_openai_model(ident, record))
    if request.app[MANAGER].settings.jit_loading:
        found: ModelRecord | None
        try:  # any name that loads a listed model (key@quant, publisher/repo, path)
            found = await request.app[MODELS].resolve(wanted)
        except (ModelNotFound, AmbiguousModel):
            found = None
        if found is not None and any(r.path == found.path for _, r in listed):
            return web.json_response(_openai_model(wanted, found))
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    if wanted in remote:
        return web.json_response(remote_listing.openai_item(wanted, remote[wanted]))
    raise ModelNotFound(f"The model {wanted!r} does not exist")


async def admin_list(request: web.Request) -> web.Response:
    store = request.app[MODELS]
    catalog = await store.catalog(max_age=0)
    loaded = request.app[MANAGER].loaded_paths()
    remote = remote_listing.remote_models(request.app[UPSTREAMS])
    models: list[api.ListedModel] = []
    for record in catalog.records:
        info = to_ls_json(record, model_key=catalog.public_id(record))
        count = len(loaded.get(record.path, []))
        # (mypy cannot build a TypedDict with an optional key from a ** of its base)
        item = cast(api.ListedModel, {**info, "loaded": count})
        if record.error is not None:
            item["error"] = record.error
        if item["modelKey"] in remote:
            item["remote"] = remote.pop(item["modelKey"])
        models.append(item)
    models += [remote_listing.ls_item(key, names) for key, names in remote.items()]
    listing: api.ModelsListing = {"models": models, "models_dirs": [str(d) for d in store.dirs]}
    return web.json_response(listing)


async def admin_import(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidRequest("'path' must be the file to import", param="path")
    mode = body.get("mode", "move")
    if mode not in get_args(ImportMode):
        choices = ", ".join(get_args(ImportMode))
        raise InvalidRequest(f"'mode' must be one of {choices}", param="mode")
    user_repo = body.get("user_repo")
    if user_repo is not None and not isinstance(user_repo, str):
        raise InvalidRequest("'user_repo' must be a string like publisher/repo", param="user_repo")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("'dry_run' must be true or false", param="dry_run")
    result = await request.app[MODELS].import_file(
        Path(os.path.expanduser(path)), mode=mode, user_repo=user_repo, dry_run=dry_run
    )
    reply: api.ImportReply = {
        "source": str(result.source),
        "target": str(result.target),
        "mode": result.mode,
        "user_repo": result.user_repo,
        "dry_run": result.dry_run,
        "warnings": list(result.warnings),
    }
    return web.json_response(reply)


def routes() -> list[Route]:
    return [
        Route("GET", api.V0_MODELS_PATH, v0_list, INFERENCE),
        # Ids may hold "/" and "@": match the rest of the path.
        Route("GET", api.V0_MODELS_PATH + "/{model:.+}", v0_get, INFERENCE),
        Route("GET", api.V1_MODELS_PATH, v1_list, INFERENCE),
        Route("GET", api.V1_MODELS_PATH + "/{model:.+}", v1_get, INFERENCE),
        Route("GET", api.ADMIN_MODELS_PATH, admin_list, ADMIN),
        # It moves files on this machine.
        Route("POST", api.ADMIN_IMPORT_PATH, admin_import, LOCAL),
    ]
