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


async def restore(manager: ModelManager, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        request = LoadRequest(
            context_length=entry.get("context_length"),
            gpu_ratio=entry.get("gpu_ratio"),
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
