"""Routes and shapes of the settings and API-key endpoints (`lms server config|key`)."""

from typing import Any, Literal, TypedDict

CONFIG_PATH = "/api/admin/config"
KEYS_PATH = "/api/admin/keys"  # list, create; `KEYS_PATH/<id or name>` to revoke

KeyScope = Literal["inference", "admin"]


class ConfigReply(TypedDict):
    """`GET /api/admin/config`: every setting, by name."""

    settings: dict[str, Any]  # current values
    defaults: dict[str, Any]
    help: dict[str, str]
    config_file: str


class ConfigSetRequest(TypedDict):
    """`POST /api/admin/config`. A string value is parsed as the setting's type."""

    key: str
    value: Any


class ConfigSetReply(TypedDict):
    key: str
    value: Any  # as stored, after parsing
    applied: Literal["live", "at next start"]
    config_file: str


class KeyCreateRequest(TypedDict, total=False):
    """`POST /api/admin/keys` (Unix socket only)."""

    name: str | None  # default: "key-<id>"
    scope: str  # a KeyScope; default "inference" (the daemon checks it)


class KeyInfo(TypedDict):
    """An API key as listed (`GET /api/admin/keys`) and revoked (`DELETE .../<key>`);
    never the secret itself."""

    id: str
    name: str
    scope: KeyScope
    created: int  # epoch seconds
    hint: str  # the first characters of the secret, then "…"


class CreatedKey(KeyInfo):
    """`POST /api/admin/keys`: the key, with its secret; shown this once."""

    key: str
