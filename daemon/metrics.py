"""Prometheus metrics (`GET /metrics`, behind the `metrics` setting), in a registry the
daemon owns (never prometheus_client's global one)."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from daemon.engines.base import DoneEvent

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, loaded: Callable[[], int], queued: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lmsd_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "lmsd_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "lmsd_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "lmsd_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation_time = Histogram(
            "lmsd_generation_seconds",
            "Generation time after the first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.worker_crashes = Counter(
            "lmsd_worker_crashes",
            "Model worker processes that died unasked",
            registry=self.registry,
        )
        Gauge(
            "lmsd_loaded_instances", "Model instances loaded or loading", registry=self.registry
        ).set_function(loaded)
        Gauge(
            "lmsd_queued_requests",
            "Requests waiting for a slot, all instances",
            registry=self.registry,
        ).set_function(queued)

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def generation(self, model: str, done: DoneEvent) -> None:
        self.tokens.labels(model).inc(done.completion_tokens)
        self.prompt_tokens.labels(model).inc(done.prompt_tokens)
        self.time_to_first_token.labels(model).observe(done.time_to_first_token)
        self.generation_time.labels(model).observe(done.generation_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
