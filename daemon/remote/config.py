"""Upstreams: what each one is, checked once at the edge, and the file that keeps them.

The file (`upstreams.json` in the state dir) is written atomically with mode 0600, as the
API keys are (daemon/auth.py): it holds the upstreams' own API keys, which are sent to
them and so cannot be hashed. A key is never logged and never returned: `public()` says
only whether one is set.
"""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.errors import InvalidRequest, NotFound, StateNotSaved
from daemon.fsutil import atomic_write_text, os_reason
from daemon.remote.policy import POLICIES, Policy

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_TIMEOUT = 3600.0
MAX_IN_FLIGHT = 4096


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str  # http(s)://host[:port][/prefix]; requests go to <base_url>/v1/...
    api_key: str | None = None
    # Upstream model id -> the key we list it as; empty: every model, under its own id.
    models: dict[str, str] = field(default_factory=dict)
    priority: int = 0  # lower is tried first among upstreams serving one model
    connect_timeout: float = 5.0  # to connect
    first_byte_timeout: float = 300.0  # from sending a request to its response headers
    idle_timeout: float = 60.0  # the longest silence inside a body or stream
    max_in_flight: int = 32  # requests sent to it at once; more go elsewhere or get 503

    @property
    def v1(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1") + "/v1"

    def exposed(self, upstream_id: str) -> str | None:
        """The key we list an upstream model as (None: not exposed)."""
        if not self.models:
            return upstream_id
        return self.models.get(upstream_id)

    def public(self) -> dict[str, Any]:
        """What the API and `lms upstream list` show: everything but the key."""
        data = asdict(self)
        del data["api_key"]
        data["api_key_set"] = self.api_key is not None
        return data

    def __repr__(self) -> str:  # never the key, whatever prints us
        return f"UpstreamConfig(name={self.name!r}, base_url={self.base_url!r})"


def _number(data: Mapping[str, Any], name: str, default: float, *, low: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a number of seconds", param=name)
    if not low < value <= MAX_TIMEOUT:
        raise InvalidRequest(
            f"'{name}' must be more than {low} and at most {MAX_TIMEOUT}", param=name
        )
    return float(value)


def _int(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a whole number from {low} to {high}", param=name)
    return value


def check_base_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidRequest("'base_url' must be the upstream's URL", param="base_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            "'base_url' must be an http:// or https:// URL with a host", param="base_url"
        )
    if parts.username or parts.password:
        raise InvalidRequest(
            "'base_url' must not hold credentials; give the key as 'api_key'", param="base_url"
        )
    if parts.query or parts.fragment:
        raise InvalidRequest("'base_url' must not have a query or fragment", param="base_url")
    return url.rstrip("/")


def _pair(item: Any) -> tuple[str, str]:
    if not isinstance(item, str) or not item:
        raise InvalidRequest("'models' must list upstream model ids", param="models")
    upstream_id, _, ours = item.partition("=")
    return upstream_id, ours or upstream_id


def upstream_from_dict(data: Mapping[str, Any]) -> UpstreamConfig:
    """An upstream from a request body or the file; InvalidRequest naming the field."""
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequest(
            "'name' must be 1-64 characters: lowercase letters, digits, '.', '_', '-'",
            param="name",
        )
    key = data.get("api_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 4096):
        raise InvalidRequest("'api_key' must be a non-empty string", param="api_key")
    if key is not None and any(c in key for c in "\r\n"):
        raise InvalidRequest("'api_key' must be one line", param="api_key")
    models = data.get("models") or {}
    if isinstance(models, list):  # ["id", "id=our-key"]
        models = dict(_pair(m) for m in models)
    if not isinstance(models, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in models.items()
    ):
        raise InvalidRequest(
            "'models' must map upstream model ids to the keys to list them as", param="models"
        )
    return UpstreamConfig(
        name=name,
        base_url=check_base_url(data.get("base_url")),
        api_key=key,
        models=dict(models),
        priority=_int(data, "priority", 0, -1000, 1000),
        connect_timeout=_number(data, "connect_timeout", 5.0, low=0),
        first_byte_timeout=_number(data, "first_byte_timeout", 300.0, low=0),
        idle_timeout=_number(data, "idle_timeout", 60.0, low=0),
        max_in_flight=_int(data, "max_in_flight", 32, 1, MAX_IN_FLIGHT),
    )


def check_policy(value: Any) -> Policy:
    if value not in POLICIES:
        raise InvalidRequest(f"'policy' must be one of {', '.join(POLICIES)}", param="policy")
    policy: Policy = value
    return policy


class UpstreamStore:
    """The configured upstreams and per-model routing policies, persisted in one JSON
    file (0600). Changes are all or nothing: written first, then made current."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.upstreams: dict[str, UpstreamConfig] = {}
        self.policies: dict[str, Policy] = {}
        self._read()

    def _read(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read the upstreams in {self.path}: {exc}") from exc
        for item in raw.get("upstreams", []):
            upstream = upstream_from_dict(item)
            self.upstreams[upstream.name] = upstream
        self.policies = {str(k): check_policy(v) for k, v in raw.get("policies", {}).items()}

    def _commit(self, upstreams: dict[str, UpstreamConfig], policies: dict[str, Policy]) -> None:
        data = {"upstreams": [asdict(u) for u in upstreams.values()], "policies": policies}
        try:
            atomic_write_text(self.path, json.dumps(data, indent=2))
        except OSError as exc:
            raise StateNotSaved(
                f"cannot save the upstreams in {self.path}: {os_reason(exc)}; nothing changed"
            ) from exc
        self.upstreams, self.policies = upstreams, policies

    def add(self, upstream: UpstreamConfig, *, replace_existing: bool = False) -> None:
        if upstream.name in self.upstreams and not replace_existing:
            raise InvalidRequest(
                f"an upstream named {upstream.name!r} exists; remove it first", param="name"
            )
        self._commit({**self.upstreams, upstream.name: upstream}, self.policies)

    def remove(self, name: str) -> UpstreamConfig:
        if name not in self.upstreams:
            raise NotFound(
                f"no upstream named {name!r} (have: {', '.join(self.upstreams) or 'none'})"
            )
        gone = self.upstreams[name]
        self._commit({k: v for k, v in self.upstreams.items() if k != name}, self.policies)
        return gone

    def set_policy(self, model: str, policy: Policy | None) -> None:
        policies = {k: v for k, v in self.policies.items() if k != model}
        if policy is not None:
            policies[model] = policy
        self._commit(dict(self.upstreams), policies)

    def with_key_kept(self, upstream: UpstreamConfig) -> UpstreamConfig:
        """A replacement that gives no key keeps the one stored."""
        old = self.upstreams.get(upstream.name)
        if upstream.api_key is None and old is not None:
            return replace(upstream, api_key=old.api_key)
        return upstream
