"""Model listings: LM Studio's `/api/v0/models`, OpenAI's `/v1/models`, and the admin
listing and import behind `lms ls` and `lms import`."""

import os
from pathlib import Path
from typing import cast, get_args

from aiohttp import web

from daemon.catalog import Catalog, ModelRecord, to_ls_json, to_v0_dict
from daemon.errors import InvalidRequest
from daemon.http.errors import read_json_object
from daemon.http.keys import MANAGER, MODELS
from daemon.http.routes import INFERENCE, LOCAL, MANAGE, Route
from daemon.importer import ImportMode
from lms.api import models as api


def _usable(catalog: Catalog) -> list[ModelRecord]:
    return [r for r in catalog.records if r.error is None]


def _created(record: ModelRecord) -> int:
    try:
        return int(record.abs_path.stat().st_mtime)
    except OSError:
        return 0


async def v0_list(request: web.Request) -> web.Response:
    catalog = await request.app[MODELS].catalog()
    data = [to_v0_dict(r, "not-loaded", model_id=catalog.public_id(r)) for r in _usable(catalog)]
    return web.json_response({"object": "list", "data": data})


async def v0_get(request: web.Request) -> web.Response:
    store = request.app[MODELS]
    record = await store.resolve(request.match_info["model"])
    catalog = await store.catalog()
    return web.json_response(to_v0_dict(record, "not-loaded", model_id=catalog.public_id(record)))


async def v1_list(request: web.Request) -> web.Response:
    # LM Studio's rule: with JIT loading on, every downloaded model; else only loaded ones.
    catalog = await request.app[MODELS].catalog()
    if request.app[MANAGER].settings.jit_loading:
        ids = [(catalog.public_id(r), r) for r in _usable(catalog)]
    else:
        ids = [(i.identifier, i.record) for i in request.app[MANAGER].instances() if i.usable]
    data = [
        {"id": ident, "object": "model", "created": _created(r), "owned_by": r.publisher}
        for ident, r in ids
    ]
    return web.json_response({"object": "list", "data": data})


async def admin_list(request: web.Request) -> web.Response:
    store = request.app[MODELS]
    catalog = await store.catalog(max_age=0)
    loaded = request.app[MANAGER].loaded_paths()
    models: list[api.ListedModel] = []
    for record in catalog.records:
        info = to_ls_json(record, model_key=catalog.public_id(record))
        count = len(loaded.get(record.path, []))
        # (mypy cannot build a TypedDict with an optional key from a ** of its base)
        item = cast(api.ListedModel, {**info, "loaded": count})
        if record.error is not None:
            item["error"] = record.error
        models.append(item)
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
        Route("GET", api.ADMIN_MODELS_PATH, admin_list, MANAGE),
        # It moves files on this machine.
        Route("POST", api.ADMIN_IMPORT_PATH, admin_import, LOCAL),
    ]
