"""A persistent cache of GGUF header reads, keyed by (absolute path, size, mtime_ns).

One JSON file, written atomically (temp file in the same folder, fsync, `os.replace`).
A missing, corrupt or other-version cache file is ignored and rebuilt; the cache is an
optimisation, never a source of truth.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.errors import GgufError
from daemon.fsutil import atomic_write_text
from daemon.gguf import GgufInfo

CACHE_VERSION = 1

_Entry = tuple[int, int, "GgufInfo | str | dict[str, object]"]


class HeaderCache:
    """Results of header reads: a `GgufInfo`, or the error text of an unreadable file.
    Owned by one caller (the catalog's scanner); not thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        self._dirty = False

    @classmethod
    def load(cls, path: Path) -> HeaderCache:
        cache = cls(path)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cache
        except (OSError, ValueError):
            cache._dirty = True  # rewrite the broken file on the next save
            return cache
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or data.get("version") != CACHE_VERSION:
            cache._dirty = True
            return cache
        for name, e in entries.items():
            if (
                isinstance(e, dict)
                and type(e.get("size")) is int
                and type(e.get("mtime_ns")) is int
            ):
                value = e.get("info") if e.get("error") is None else e.get("error")
                if isinstance(value, dict | str):
                    cache._entries[name] = (e["size"], e["mtime_ns"], value)
        return cache

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, size: int, mtime_ns: int) -> GgufInfo | str | None:
        entry = self._entries.get(path)
        if entry is None or entry[0] != size or entry[1] != mtime_ns:
            return None
        value = entry[2]
        if isinstance(value, dict):
            try:
                value = GgufInfo.from_dict(value)
            except GgufError:
                del self._entries[path]
                self._dirty = True
                return None
            self._entries[path] = (size, mtime_ns, value)
        return value

    def put(self, path: str, size: int, mtime_ns: int, result: GgufInfo | str) -> None:
        self._entries[path] = (size, mtime_ns, result)
        self._dirty = True

    def retain(self, paths: set[str]) -> None:
        """Forget files not in `paths` (deleted or moved since the last scan)."""
        stale = [p for p in self._entries if p not in paths]
        for p in stale:
            del self._entries[p]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        """Write the cache if it changed. Raises `OSError`."""
        if not self._dirty or self.path is None:
            return
        entries: dict[str, object] = {}
        for name, (size, mtime_ns, value) in self._entries.items():
            if isinstance(value, str):
                entries[name] = {"size": size, "mtime_ns": mtime_ns, "error": value}
            else:
                info = value.to_dict() if isinstance(value, GgufInfo) else value
                entries[name] = {"size": size, "mtime_ns": mtime_ns, "info": info}
        atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": entries}))
        self._dirty = False
