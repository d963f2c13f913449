"""The owner of upstream state: the one HTTP client session, what each upstream serves
(polled from its `/v1/models`), its circuit breaker, its requests in flight and its
metrics. Everything here runs on the event loop; the poller is a task this owns and
awaits at close.

Events worth a reader's attention (an upstream down, back, its circuit opening or
closing, added, removed) are logged, so they reach `lms log stream --source server`.
Keys are sent in the `Authorization` header and never logged.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.errors import InvalidRequest, UpstreamFailed
from daemon.remote.breaker import BreakerState, CircuitBreaker
from daemon.remote.config import UpstreamConfig, UpstreamStore
from daemon.remote.stream import (
    MAX_BODY_BYTES,
    MAX_ERROR_BYTES,
    StreamBroken,
    error_message,
    read_body,
    read_json,
)
from daemon.remote.translate import BadChunk, model_ids

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 15.0
POLL_TIMEOUT_S = 10.0
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class UpstreamBusy(Exception):
    """The upstream answered 429 or 503: try another; not a fault of the upstream's."""


@dataclass
class Upstream:
    """One configured upstream and what the pool knows of it."""

    config: UpstreamConfig
    breaker: CircuitBreaker
    models: dict[str, str] = field(default_factory=dict)  # our key -> the upstream's id
    in_flight: int = 0
    reachable: bool | None = None  # None: not polled yet
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def can_take(self) -> bool:
        return self.in_flight < self.config.max_in_flight and self.breaker.available()

    def status(self) -> dict[str, Any]:
        return {
            **self.config.public(),
            "reachable": self.reachable,
            "circuit": self.breaker.state.value,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            "served_models": sorted(self.models),
        }


class UpstreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["upstream"]
        self.requests = Counter(
            "lmsd_upstream_requests", "Requests sent to an upstream", labels, registry=registry
        )
        self.errors = Counter(
            "lmsd_upstream_errors", "Requests an upstream failed", labels, registry=registry
        )
        self.latency = Histogram(
            "lmsd_upstream_first_byte_seconds",
            "Time from sending a request to an upstream to its response headers",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "lmsd_upstream_in_flight",
            "Requests in flight to an upstream",
            labels,
            registry=registry,
        )
        self.circuit_open = Gauge(
            "lmsd_upstream_circuit_open",
            "1 while an upstream's circuit is open",
            labels,
            registry=registry,
        )


class UpstreamPool:
    def __init__(
        self,
        store: UpstreamStore,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = POLL_INTERVAL_S,
        breaker_threshold: int = 3,
        breaker_reset_after: float = 30.0,
    ) -> None:
        self.store = store
        self._clock = clock
        self._poll_interval = poll_interval
        self._threshold = breaker_threshold
        self._reset_after = breaker_reset_after
        self.metrics = UpstreamMetrics(registry)
        self._upstreams: dict[str, Upstream] = {}
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        for config in store.upstreams.values():
            self._track(config)

    # -- configuration ----------------------------------------------------------------------

    def _track(self, config: UpstreamConfig) -> Upstream:
        breaker = CircuitBreaker(
            threshold=self._threshold, reset_after=self._reset_after, clock=self._clock
        )
        upstream = Upstream(config, breaker)
        self._upstreams[config.name] = upstream
        return upstream

    async def add(self, config: UpstreamConfig, *, replace_existing: bool = False) -> Upstream:
        config = self.store.with_key_kept(config) if replace_existing else config
        self.store.add(config, replace_existing=replace_existing)
        upstream = self._track(config)
        log.info("upstream %s added (%s)", config.name, config.base_url)
        if self._session is not None:
            await self.poll(upstream)
        return upstream

    def remove(self, name: str) -> None:
        self.store.remove(name)
        self._upstreams.pop(name, None)
        for metric in (self.metrics.in_flight, self.metrics.circuit_open):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        log.info("upstream %s removed", name)

    # -- queries ----------------------------------------------------------------------------

    def upstreams(self) -> list[Upstream]:
        return sorted(self._upstreams.values(), key=lambda u: (u.config.priority, u.name))

    def get(self, name: str) -> Upstream | None:
        return self._upstreams.get(name)

    def serving(self, key: str) -> list[Upstream]:
        """The upstreams that list `key`, in the order to try them: priority, then the
        fewest requests in flight."""
        found = [u for u in self._upstreams.values() if key in u.models]
        return sorted(found, key=lambda u: (u.config.priority, u.in_flight, u.name))

    def serves(self, key: str) -> bool:
        return any(key in u.models for u in self._upstreams.values())

    def available(self, key: str) -> bool:
        return any(u.can_take() for u in self.serving(key))

    def listed(self) -> dict[str, list[Upstream]]:
        """Every remote model key and the upstreams serving it."""
        out: dict[str, list[Upstream]] = {}
        for upstream in self.upstreams():
            for key in upstream.models:
                out.setdefault(key, []).append(upstream)
        return out

    # -- requests ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamFailed("?", "the daemon is not started")
        return self._session

    def _headers(self, config: UpstreamConfig) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key}"
        return headers

    def take(self, upstream: Upstream) -> bool:
        """Counts a request in flight to `upstream` if it may take one now."""
        if upstream.in_flight >= upstream.config.max_in_flight or not upstream.breaker.allow():
            return False
        upstream.in_flight += 1
        self.metrics.in_flight.labels(upstream.name).set(upstream.in_flight)
        self.metrics.requests.labels(upstream.name).inc()
        return True

    def release(self, upstream: Upstream, error: str | None) -> None:
        """A request to `upstream` is over: `error` says how it failed (None: it did not)."""
        upstream.in_flight -= 1
        self.metrics.in_flight.labels(upstream.name).set(upstream.in_flight)
        if error is None:
            self._succeeded(upstream)
        else:
            self.metrics.errors.labels(upstream.name).inc()
            self._failed(upstream, error)

    def _succeeded(self, upstream: Upstream) -> None:
        upstream.reachable = True
        upstream.last_error = None
        if upstream.breaker.success():
            log.warning("upstream %s: circuit closed, it serves again", upstream.name)
        self.metrics.circuit_open.labels(upstream.name).set(0)

    def _failed(self, upstream: Upstream, error: str) -> None:
        upstream.last_error = error
        if upstream.breaker.failure():
            log.warning(
                "upstream %s: circuit open after %d failures (%s); retrying it in %gs",
                upstream.name,
                upstream.breaker.failures,
                error,
                upstream.breaker.reset_after,
            )
        if upstream.breaker.state is BreakerState.OPEN:
            self.metrics.circuit_open.labels(upstream.name).set(1)

    @contextlib.asynccontextmanager
    async def post(
        self, upstream: Upstream, path: str, body: dict[str, Any]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POSTs `body` to `<upstream>/v1<path>` and yields the response once its headers
        are in and its status is a success. Raises UpstreamBusy (429/503), InvalidRequest
        (another 4xx: the request's fault, with the upstream's message) or UpstreamFailed.
        Leaving the block closes the connection (the upstream sees the client go)."""
        config = upstream.config
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, connect=config.connect_timeout
        )
        started = self._clock()
        try:
            async with asyncio.timeout(config.first_byte_timeout):
                response = await self._client().post(
                    config.v1 + path, json=body, headers=self._headers(config), timeout=timeout
                )
        except TimeoutError as exc:
            raise UpstreamFailed(
                upstream.name, f"did not answer in {config.first_byte_timeout:g}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailed(upstream.name, f"cannot be reached: {_reason(exc)}") from exc
        self.metrics.latency.labels(upstream.name).observe(max(0.0, self._clock() - started))
        try:
            if response.status >= 400:
                await self._refuse(upstream, response)
            yield response
        finally:
            response.close()

    async def _refuse(self, upstream: Upstream, response: aiohttp.ClientResponse) -> None:
        try:
            body = await read_body(response, upstream.config.idle_timeout, MAX_ERROR_BYTES)
            message = error_message(body)
        except StreamBroken:
            message = "no readable message"
        status = response.status
        if status in (429, 503):
            raise UpstreamBusy(f"answered {status}: {message}")
        if status in (401, 403):
            raise UpstreamFailed(upstream.name, f"refused our API key ({status}): {message}")
        if 400 <= status < 500 and status != 404:
            raise InvalidRequest(f"upstream {upstream.name!r} refused the request: {message}")
        raise UpstreamFailed(upstream.name, f"answered {status}: {message}")

    # -- discovery and health ---------------------------------------------------------------

    async def poll(self, upstream: Upstream) -> None:
        """Asks an upstream for its models: its listing and health check at once."""
        config = upstream.config
        try:
            async with asyncio.timeout(POLL_TIMEOUT_S):
                async with self._client().get(
                    config.v1 + "/models", headers=self._headers(config)
                ) as response:
                    if response.status != 200:
                        body = await read_body(response, POLL_TIMEOUT_S, MAX_ERROR_BYTES)
                        raise UpstreamFailed(
                            config.name,
                            f"/v1/models answered {response.status}: {error_message(body)}",
                        )
                    ids = model_ids(await read_json(response, POLL_TIMEOUT_S, MAX_BODY_BYTES))
        except (
            TimeoutError,
            aiohttp.ClientError,
            OSError,
            StreamBroken,
            BadChunk,
            UpstreamFailed,
        ) as exc:
            reason = "did not answer in time" if isinstance(exc, TimeoutError) else _reason(exc)
            if upstream.reachable is not False:
                log.warning("upstream %s is unreachable: %s", config.name, reason)
            upstream.reachable = False
            self._failed(upstream, reason)
            return
        if self._upstreams.get(config.name) is not upstream:
            return  # removed while polling
        models = {}
        for upstream_id in ids:
            key = config.exposed(upstream_id)
            if key is not None:
                models[key] = upstream_id
        if upstream.reachable is not True or models != upstream.models:
            log.info(
                "upstream %s serves %d models: %s",
                config.name,
                len(models),
                ", ".join(sorted(models)) or "none",
            )
        upstream.models = models
        if upstream.reachable is False:
            log.warning("upstream %s is reachable again", config.name)
        self._succeeded(upstream)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(u) for u in list(self._upstreams.values())))

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_all()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    def poke(self) -> None:
        """Poll every upstream now."""
        self._wake.set()

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            auto_decompress=True,
            raise_for_status=False,
        )
        self._poller = asyncio.create_task(self._poll_forever(), name="upstream-poller")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]
