"""Restore on restart: what `lms load` loaded is written down on every change and loaded
again when the daemon starts, so a service at boot comes back as it was. JIT-loaded
instances are not restored: the next request loads them."""

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

from daemon.config import MAX_SECONDS
from daemon.errors import LmsError
from daemon.fsutil import atomic_write_text
from daemon.instance import ENGINE_SETTINGS, LoadRequest
from daemon.manager import ModelManager

log = logging.getLogger(__name__)


def save(path: Path, entries: list[dict[str, Any]]) -> None:
    # An instance that never unloads (ttl inf) is written as null: JSON has no infinity.
    entries = [
        {**e, "ttl": None} if isinstance(e.get("ttl"), float) and not math.isfinite(e["ttl"]) else e
        for e in entries
    ]
    try:
        atomic_write_text(path, json.dumps(entries, indent=2, allow_nan=False) + "\n")
    except (OSError, ValueError) as exc:
        log.warning("cannot record loaded models in %s: %s", path, exc)


def read(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []
    return (
        [e for e in entries if isinstance(e, dict) and isinstance(e.get("model"), str)]
        if (isinstance(entries, list))
        else []
    )


def _ttl(entry: dict[str, Any]) -> float | None:
    """The entry's idle TTL in seconds; None (never unload) for a negative one, and for
    one that is no usable number (NaN, infinite, beyond ten years, a string), which is
    logged: a hand-edited or corrupt file must not bring back a broken instance."""
    value = entry.get("ttl")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        log.warning("ignoring the ttl %r of %s: not a number of seconds", value, entry["model"])
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite or value > MAX_SECONDS:
        log.warning("ignoring the ttl %r of %s: not a usable duration", value, entry["model"])
        return None
    return None if value < 0 else float(value)


def _gpu(value: Any) -> float | None:
    return {"off": 0.0, "max": 1.0}.get(value, value) if value is not None else None


async def restore(manager: ModelManager, entries: list[dict[str, Any]]) -> None:
    """Load each entry (restored `lms load`s, then the config's `preload` list); a model
    that cannot be loaded is logged and skipped, never stops the daemon."""
    for entry in entries:
        request = LoadRequest(
            context_length=entry.get("context_length"),
            gpu_ratio=_gpu(entry.get("gpu_ratio", entry.get("gpu"))),
            parallel=entry.get("parallel"),
            # The engine settings it was loaded with (checked again by the load).
            **{name: entry.get(name) for name in ENGINE_SETTINGS},
        )
        try:
            await manager.load(
                entry["model"], request, identifier=entry.get("identifier"), ttl=_ttl(entry)
            )
            log.info("restored %s", entry.get("identifier") or entry["model"])
        except LmsError as exc:
            log.warning("could not restore %s: %s", entry["model"], exc)
        except asyncio.CancelledError:
            raise
