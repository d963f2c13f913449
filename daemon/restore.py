"""Restore on restart: what `lms load` loaded is written down on every change and loaded
again when the daemon starts, so a service at boot comes back as it was. JIT-loaded
instances are not restored: the next request loads them."""

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from daemon.errors import LmsError
from daemon.fsutil import atomic_write_text
from daemon.instance import LoadRequest
from daemon.manager import ModelManager

log = logging.getLogger(__name__)


def save(path: Path, entries: list[dict[str, Any]]) -> None:
    try:
        atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
    except OSError as exc:
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
        )
        try:
            await manager.load(
                entry["model"], request, identifier=entry.get("identifier"), ttl=entry.get("ttl")
            )
            log.info("restored %s", entry.get("identifier") or entry["model"])
        except LmsError as exc:
            log.warning("could not restore %s: %s", entry["model"], exc)
        except asyncio.CancelledError:
            raise
