"""`lms server config` and `lms server key`: every server setting, and the API keys."""

import dataclasses
from typing import Any

from aiohttp import web

from daemon.config import SETTING_NAMES, Settings, coerce
from daemon.errors import InvalidRequest
from daemon.http.errors import read_json_object
from daemon.http.keys import CONTROL
from daemon.http.routes import ADMIN, LOCAL, Route
from lms.api import settings as api
from lms.api.settings import CONFIG_PATH, KEYS_PATH

HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(Settings)}


def settings_dict(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in SETTING_NAMES}


async def get_config(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    reply: api.ConfigReply = {
        "settings": settings_dict(control.settings),
        "defaults": settings_dict(Settings()),
        "help": HELP,
        "config_file": str(control.config_file),
    }
    return web.json_response(reply)


async def set_config(request: web.Request) -> web.Response:
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
    reply: api.ConfigSetReply = {
        "key": key,
        "value": getattr(new, key),
        "applied": "live" if live else "at next start",
        "config_file": str(control.config_file),
    }
    return web.json_response(reply)


async def list_keys(request: web.Request) -> web.Response:
    keys: list[api.KeyInfo] = [k.public() for k in request.app[CONTROL].keys.all()]
    return web.json_response(keys)


async def create_key(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'name' must be a string", param="name")
    key, secret = request.app[CONTROL].keys.create(name, str(body.get("scope", "inference")))
    created: api.CreatedKey = {**key.public(), "key": secret}
    return web.json_response(created)


async def revoke_key(request: web.Request) -> web.Response:
    key = request.app[CONTROL].keys.revoke(request.match_info["key"])
    return web.json_response(key.public())


def routes() -> list[Route]:
    return [
        Route("GET", CONFIG_PATH, get_config, ADMIN),
        Route("POST", CONFIG_PATH, set_config, ADMIN),
        # Keys are listed, minted and revoked only on this machine.
        Route("GET", KEYS_PATH, list_keys, LOCAL),
        Route("POST", KEYS_PATH, create_key, LOCAL),
        Route("DELETE", KEYS_PATH + "/{key}", revoke_key, LOCAL),
    ]
