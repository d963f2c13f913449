"""The daemon's inference side, built in one place and in the order its parts depend on
each other: events → model store → manager → metrics → prediction service (and the
stored conversations of the stateful APIs); started
(TTL reaper, then restoring what was loaded) and closed by its owner, `Daemon`.

Nothing here listens on a socket: a test builds a `Core` and an app around it and drives
every route in process (with `engine: fake`, in milliseconds).
"""

import asyncio
import contextlib
from pathlib import Path

from daemon import restore
from daemon.catalog import ModelRecord
from daemon.config import Settings
from daemon.engines.handle import EngineStarter, start_engine
from daemon.events import EventBus
from daemon.instance import LoadRequest
from daemon.manager import ModelManager
from daemon.metrics import Metrics
from daemon.model_defaults import FILE_NAME as MODEL_DEFAULTS_FILE
from daemon.model_defaults import ModelDefaults
from daemon.model_store import ModelStore, models_dirs_for
from daemon.prediction.conversations import ConversationStore
from daemon.prediction.image_urls import ImageFetcher
from daemon.prediction.service import PredictionService
from daemon.remote.config import UpstreamStore
from daemon.remote.pool import UpstreamPool
from daemon.remote.router import Router


class Core:
    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path,
        state_dir: Path,
        starter: EngineStarter = start_engine,
        config_dir: Path | None = None,
        image_fetcher: ImageFetcher | None = None,
    ) -> None:
        self.events = EventBus()
        # Per-model load defaults, in the config folder (`lms model-defaults`).
        self.model_defaults = ModelDefaults((config_dir or state_dir) / MODEL_DEFAULTS_FILE)
        self.store = ModelStore(
            models_dirs_for(settings, data_dir), state_dir / "catalog-cache.json"
        )
        self._loads_file = state_dir / "loaded-models.json"
        self.manager = ModelManager(
            self.store,
            settings,
            starter=starter,
            on_change=self._save_loads,
            on_crash=lambda: self.metrics.worker_crashes.inc(),
            defaults_of=self._defaults_of,
        )
        self.metrics = Metrics(
            loaded=lambda: len(self.manager.instances()),
            queued=lambda: sum(
                max(0, i.in_flight - i.config.parallel) for i in self.manager.instances()
            ),
        )
        # Remote upstreams (docs/scale-out.md): their file holds their keys, 0600.
        self.upstreams = UpstreamPool(
            UpstreamStore(state_dir / "upstreams.json"), self.metrics.registry
        )
        self.router = Router(self.manager, self.upstreams)
        # Image URLs are fetched by the HTTP layer's fetcher (None: refused).
        self.predictions = PredictionService(
            self.manager, self.metrics, self.events, self.router, image_fetcher
        )
        # Responses kept for `previous_response_id` (Responses API, REST v1 chat).
        self.conversations = ConversationStore()
        self._restoring: asyncio.Task[None] | None = None

    def _defaults_of(self, record: ModelRecord) -> tuple[LoadRequest, float | None]:
        settings = self.model_defaults.settings(record.path)
        return settings.request, settings.ttl

    def _save_loads(self) -> None:
        restore.save(self._loads_file, self.manager.manual_loads())

    def start(self) -> None:
        """The TTL reaper, then (in the background) what `lms load` had loaded before the
        last stop and the config's `preload` list."""
        self.manager.start()
        self.upstreams.start()
        settings = self.manager.settings
        at_start = restore.read(self._loads_file) if settings.restore_on_restart else []
        at_start += settings.preload
        if at_start:
            self._restoring = asyncio.create_task(restore.restore(self.manager, at_start))

    async def close(self) -> None:
        if self._restoring is not None:
            self._restoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restoring
        await self.upstreams.close()
        await self.manager.close()
