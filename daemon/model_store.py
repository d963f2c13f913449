"""The owner of the model catalog: where models live, the latest scan, imports.

Scans run in a thread (they read files) one at a time; each produces an immutable
`Catalog` that the event loop swaps in. A name that is not in the last snapshot triggers
a fresh scan before it is reported missing, so a newly copied file is found at once.
"""

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from daemon.catalog import Catalog, ModelRecord, scan
from daemon.config import Settings
from daemon.errors import ModelNotFound
from daemon.header_cache import HeaderCache
from daemon.importer import ImportMode, ImportResult, import_model

# Listings within this many seconds of a scan reuse it (a rescan is cheap, not free).
SNAPSHOT_MAX_AGE_SECONDS = 1.0
LM_STUDIO_MODELS_DIR = Path("~/.lmstudio/models")


def models_dirs_for(settings: Settings, data_dir: Path) -> list[Path]:
    """The configured folders; else LM Studio's when it exists (its users keep their
    files), else `models/` in our data dir."""
    if settings.models_dirs:
        return [Path(d).expanduser() for d in settings.models_dirs]
    lm_studio = LM_STUDIO_MODELS_DIR.expanduser()
    if lm_studio.is_dir():
        return [lm_studio]
    return [data_dir / "models"]


class ModelStore:
    def __init__(self, dirs: Sequence[Path], cache_file: Path) -> None:
        self.dirs = list(dirs)
        self._cache = HeaderCache.load(cache_file)
        self._scan_lock = asyncio.Lock()
        self._catalog: Catalog | None = None
        self._scanned_at = 0.0

    def set_dirs(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)
        self._scanned_at = 0.0  # the next listing rescans

    @property
    def import_dir(self) -> Path:
        """Imports go to the first models folder."""
        return self.dirs[0]

    async def catalog(self, *, max_age: float = SNAPSHOT_MAX_AGE_SECONDS) -> Catalog:
        async with self._scan_lock:
            fresh = time.monotonic() - self._scanned_at <= max_age
            if self._catalog is None or not fresh:
                self._catalog = await asyncio.to_thread(scan, self.dirs, self._cache)
                self._scanned_at = time.monotonic()
            return self._catalog

    async def resolve(self, name: str) -> ModelRecord:
        try:
            return (await self.catalog()).resolve(name)
        except ModelNotFound:
            return (await self.catalog(max_age=0)).resolve(name)

    async def import_file(
        self, source: Path, *, mode: ImportMode, user_repo: str | None, dry_run: bool
    ) -> ImportResult:
        result = await asyncio.to_thread(
            import_model,
            source,
            self.import_dir,
            mode=mode,
            user_repo=user_repo,
            dry_run=dry_run,
        )
        self._scanned_at = 0.0  # the next listing rescans
        return result
