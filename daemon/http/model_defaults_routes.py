"""Per-model load defaults (`lms model-defaults`): read them, change them. A change is
checked as a load of that model with it would be (ModelManager.resolve_config), saved
atomically, and only then used by the next load; a refused one (400) changes nothing."""

from typing import Any

from aiohttp import web

from daemon.catalog import ModelRecord
from daemon.compat.fields import optional, required
from daemon.compat.load_settings import setting_names
from daemon.errors import InvalidRequest
from daemon.http.errors import read_json_object
from daemon.http.keys import MANAGER, MODEL_DEFAULTS, MODELS
from daemon.http.routes import ADMIN, Route
from lms.api import model_defaults as api


async def _entry(request: web.Request, record: ModelRecord) -> api.ModelDefaultsEntry:
    catalog = await request.app[MODELS].catalog()
    return {
        "model": catalog.public_id(record),
        "path": record.path,
        "defaults": request.app[MODEL_DEFAULTS].wire(record.path),
    }


async def read(request: web.Request) -> web.Response:
    defaults = request.app[MODEL_DEFAULTS]
    name = request.query.get("model")
    if name is not None:
        record = await request.app[MODELS].resolve(name)
        return web.json_response(await _entry(request, record))
    catalog = await request.app[MODELS].catalog()
    by_path = {r.path: r for r in catalog.records}
    models: list[api.ModelDefaultsEntry] = [
        {
            "model": catalog.public_id(by_path[path]) if path in by_path else path,
            "path": path,
            "defaults": settings,
        }
        for path, settings in defaults.all_wire().items()
    ]
    listing: api.ModelDefaultsListing = {"settings": setting_names(), "models": models}
    return web.json_response(listing)


def _reset(body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The changes a `reset` asks for: every setting (true) or those named, to null."""
    reset = body.get("reset")
    if reset is None or reset is False:
        return {}
    if reset is True:
        return dict.fromkeys(current)
    if isinstance(reset, list) and all(isinstance(name, str) for name in reset):
        return dict.fromkeys(reset)
    raise InvalidRequest(
        "'reset' must be true or a list of setting names", param="reset", code="invalid_type"
    )


async def change(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    record = await request.app[MODELS].resolve(required(body, "model", str))
    defaults = request.app[MODEL_DEFAULTS]
    changes = {**_reset(body, defaults.wire(record.path)), **(optional(body, "set", dict) or {})}
    merged = defaults.merged(record.path, changes)
    # Refused here exactly as a load with these settings would be (range, choices, the
    # model's own context length).
    request.app[MANAGER].resolve_config(record, merged.request)
    defaults.replace(record.path, merged)
    return web.json_response(await _entry(request, record))


def routes() -> list[Route]:
    return [
        Route("GET", api.MODEL_DEFAULTS_PATH, read, ADMIN),
        Route("POST", api.MODEL_DEFAULTS_PATH, change, ADMIN),
    ]
