"""`lms server config` and `lms server key`: every server setting, and the API keys."""

import dataclasses
from typing import Any

from aiohttp import web

from daemon.config import SETTING_NAMES, Settings, coerce
from daemon.errors import InvalidRequest
from daemon.http.channel import require_unix_socket
from daemon.http.errors import read_json_object
from daemon.http.keys import CONTROL
from daemon.http.security import require_admin
from lms.api.settings import CONFIG_PATH, KEYS_PATH

HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(Settings)}


def settings_dict(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in SETTING_NAMES}


async def get_config(request: web.Request) -> web.Response:
    require_admin(request)
    control = request.app[CONTROL]
    return web.json_response(
        {
            "settings": settings_dict(control.settings),
            "defaults": settings_dict(Settings()),
            "help": HELP,
            "config_file": str(control.config_file),
        }
    )


async def set_config(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json_object(request)
    key = body.get("key")
    if not isinstance(key, str) or key not in SETTING_NAMES:
        raise InvalidRequest(
            f"unknown setting {key!r}; known: {', '.join(SETTING_NAMES)}", param="key"
        )
    raw = body.get("value")
    value = coerce(key, raw, "lms server config set", from_text=isinstance(raw, str))
    control = request.app[CONTROL]
    new = dataclasses.replace(control.settings, **{key: value})
    live = await control.apply_setting(key, new)
    return web.json_response(
        {
            "key": key,
            "value": getattr(new, key),
            "applied": "live" if live else "at next start",
            "config_file": str(control.config_file),
        }
    )


async def list_keys(request: web.Request) -> web.Response:
    require_unix_socket(request)
    return web.json_response([k.public() for k in request.app[CONTROL].keys.all()])


async def create_key(request: web.Request) -> web.Response:
    require_unix_socket(request)  # minting keys stays on this machine
    body = await read_json_object(request)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'name' must be a string", param="name")
    key, secret = request.app[CONTROL].keys.create(name, str(body.get("scope", "inference")))
    return web.json_response({**key.public(), "key": secret})


async def revoke_key(request: web.Request) -> web.Response:
    require_unix_socket(request)
    key = request.app[CONTROL].keys.revoke(request.match_info["key"])
    return web.json_response(key.public())


def add_routes(app: web.Application) -> None:
    app.router.add_get(CONFIG_PATH, get_config)
    app.router.add_post(CONFIG_PATH, set_config)
    app.router.add_get(KEYS_PATH, list_keys)
    app.router.add_post(KEYS_PATH, create_key)
    app.router.add_delete(KEYS_PATH + "/{key}", revoke_key)
