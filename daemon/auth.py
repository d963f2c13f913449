"""API keys: created by `lms server key create`, shown once, stored only as SHA-256
hashes (the keys are 256-bit random tokens, so a fast hash is enough), compared in
constant time. Two scopes: `inference` (the /v1 and /api/v0 APIs) and `admin` (also load,
unload, config, shutdown)."""

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import InvalidRequest, NotFound, StateNotSaved
from daemon.fsutil import atomic_write_text, os_reason
from lms.api.settings import KeyInfo

Scope = Literal["inference", "admin"]
SCOPES: tuple[Scope, ...] = ("inference", "admin")
KEY_PREFIX = "lms-"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scope: Scope
    sha256: str
    created: float
    hint: str  # the first characters, to tell keys apart in listings

    def public(self) -> KeyInfo:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created": int(self.created),
            "hint": self.hint,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The daemon's API keys, persisted in one JSON file (0600) in the state dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = self._read()

    def _read(self) -> list[ApiKey]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read the API keys in {self.path}: {exc}") from exc
        return [ApiKey(**item) for item in raw]

    def _commit(self, keys: list[ApiKey]) -> None:
        """Write `keys` to disk, then make them the keys in use: all or nothing, so a key
        is never usable only until a restart, nor revoked only until one."""
        try:
            atomic_write_text(self.path, json.dumps([asdict(k) for k in keys], indent=2))
        except OSError as exc:
            raise StateNotSaved(
                f"cannot save the API keys in {self.path}: {os_reason(exc)}; nothing changed"
            ) from exc
        self._keys = keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def all(self) -> list[ApiKey]:
        return list(self._keys)

    def create(self, name: str | None, scope: str) -> tuple[ApiKey, str]:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secrets.token_hex(4)
        name = name or f"key-{key_id}"
        if any(k.name == name for k in self._keys):
            raise InvalidRequest(f"a key named {name!r} exists already", param="name")
        key = ApiKey(key_id, name, scope, _digest(secret), time.time(), secret[:8] + "…")
        self._commit([*self._keys, key])
        return key, secret

    def revoke(self, id_or_name: str) -> ApiKey:
        for key in self._keys:
            if id_or_name in (key.id, key.name):
                self._commit([k for k in self._keys if k is not key])
                return key
        raise NotFound(f"no API key with id or name {id_or_name!r}")

    def check(self, secret: str) -> ApiKey | None:
        """The key this secret belongs to. Compares every stored hash, in constant time."""
        digest = _digest(secret)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found
