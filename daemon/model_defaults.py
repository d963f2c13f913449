"""Per-model load defaults (LM Studio's "per-model defaults"): the load settings a user
chose once for a model, which every load of it starts from: `lms load`, the load APIs and
just-in-time loads alike; a setting given with the load still wins.

Kept in `<config dir>/model-defaults.json`, by the model's path in the models folder:

    {"models": {"publisher/repo/file.gguf": {"context_length": 8192, "parallel": 2, "ttl": 600}}}

Settings are the load API's fields (`POST /api/v1/models/load`), whatever they are
(compat/load_settings.py reads them generically). A change is checked first (the caller
plans a load with it), written atomically, and only then used: a refused or unsaved
change leaves the file and the running daemon as they were.
"""

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.compat.load_settings import (
    LoadSettings,
    parse_load_settings,
    setting_names,
    settings_to_wire,
)
from daemon.errors import InvalidRequest, LmsError, StateNotSaved
from daemon.fsutil import atomic_write_text, os_reason
from daemon.instance import LoadRequest

log = logging.getLogger(__name__)

FILE_NAME = "model-defaults.json"


class ModelDefaults:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._models: dict[str, LoadSettings] = self._read()

    def _read(self) -> dict[str, LoadSettings]:
        """The saved defaults; an unreadable file or a bad entry is logged and skipped
        (the daemon starts without them), never half-applied."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the per-model defaults in %s: %s", self.path, exc)
            return {}
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            log.warning("ignoring the per-model defaults in %s: no 'models' object", self.path)
            return {}
        found: dict[str, LoadSettings] = {}
        for model, entry in models.items():
            try:
                if not isinstance(entry, dict):
                    raise InvalidRequest("not an object")
                found[model] = parse_load_settings(entry)
            except LmsError as exc:
                log.warning("ignoring the defaults of %s in %s: %s", model, self.path, exc)
        return found

    # -- reading ---------------------------------------------------------------------

    def settings(self, model_path: str) -> LoadSettings:
        return self._models.get(model_path) or LoadSettings(LoadRequest(), None)

    def wire(self, model_path: str) -> dict[str, Any]:
        """A model's defaults by their API names ({} when it has none)."""
        return settings_to_wire(self.settings(model_path))

    def all_wire(self) -> dict[str, dict[str, Any]]:
        return {model: settings_to_wire(s) for model, s in sorted(self._models.items())}

    # -- changing --------------------------------------------------------------------

    def merged(self, model_path: str, changes: Mapping[str, Any]) -> LoadSettings:
        """The model's defaults with `changes` applied (a null value removes a setting),
        parsed; InvalidRequest for an unknown setting or a value of the wrong type."""
        known = set(setting_names())
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidRequest(
                f"unknown load setting {unknown[0]!r} (known: {', '.join(sorted(known))})",
                param=unknown[0],
                code="invalid_value",
            )
        wire = {**self.wire(model_path), **changes}
        return parse_load_settings({k: v for k, v in wire.items() if v is not None})

    def replace(self, model_path: str, settings: LoadSettings) -> None:
        """Saves `settings` as the model's defaults (none left: the entry goes), then
        uses them. StateNotSaved, and nothing changes, when the file cannot be written."""
        models = dict(self._models)
        if settings_to_wire(settings):
            models[model_path] = settings
        else:
            models.pop(model_path, None)
        body = {"models": {m: settings_to_wire(s) for m, s in sorted(models.items())}}
        try:
            atomic_write_text(self.path, json.dumps(body, indent=2) + "\n", mode=0o644)
        except OSError as exc:
            raise StateNotSaved(
                f"cannot save the defaults of {model_path} in {self.path}: {os_reason(exc)}"
            ) from exc
        self._models = models
