"""The event bus behind `lms log stream`: fan-out, sources, bounded buffers, close, the
logging handler (from any thread, never recursing) and the NDJSON route in-process."""

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.core import Core
from daemon.events import (
    EventBus,
    EventLogHandler,
    Subscription,
    done_stats,
    level_name,
    prediction_input,
    prediction_output,
    prediction_stats,
    server_log,
    source_of,
)
from daemon.http.app import create_app
from lms.api.log import LOG_STREAM_PATH
from tests.unit.test_http_admin import FakeControl

INPUT = prediction_input("m", "pub/repo/m.gguf", "hi")
OUTPUT = prediction_output("m", "hello", None)
LOG = server_log("started", "info")


async def next_event(events: Subscription, timeout: float = 2.0) -> dict[str, Any]:
    return await asyncio.wait_for(anext(events), timeout)


async def drain(events: Subscription) -> list[dict[str, Any]]:
    return [event async for event in events]


async def test_publish_fans_out_with_a_timestamp() -> None:
    bus = EventBus()
    async with bus.subscribe() as first, bus.subscribe() as second:
        before = int(time.time() * 1000)
        bus.publish(LOG)
        for events in (first, second):
            event = await next_event(events)
            assert event["data"] == LOG
            assert before <= event["timestamp"] <= int(time.time() * 1000)
            assert set(event) == {"timestamp", "data"}


async def test_sources_filter_events() -> None:
    bus = EventBus()
    async with (
        bus.subscribe("model") as model,
        bus.subscribe("server") as server,
        bus.subscribe(None) as everything,
    ):
        for data in (INPUT, LOG, OUTPUT, {"type": "something.else"}):
            bus.publish(data)
        bus.close()
        assert [e["data"] for e in await drain(model)] == [INPUT, OUTPUT]
        assert [e["data"] for e in await drain(server)] == [LOG]
        assert len(await drain(everything)) == 4


def test_source_of() -> None:
    assert source_of(INPUT) == source_of(OUTPUT) == "model"
    assert source_of({"type": "llm.prediction.fragment"}) == "model"
    assert source_of(LOG) == "server"
    assert source_of({"type": "runtime.log"}) is None
    assert source_of({}) is None


async def test_a_slow_reader_loses_its_oldest_events_and_counts_them() -> None:
    bus = EventBus(buffer=3)
    async with bus.subscribe() as slow, bus.subscribe() as other:
        for n in range(5):
            bus.publish({"type": "server.log", "content": str(n), "level": "info"})
        assert slow.dropped == 2
        assert [e["data"]["content"] for e in [await next_event(slow) for _ in range(3)]] == [
            "2",
            "3",
            "4",
        ]
        assert other.dropped == 2
        bus.publish(LOG)  # room again: nothing more is lost
        assert (await next_event(slow))["data"] == LOG
        assert slow.dropped == 2


async def test_publishing_never_blocks_and_memory_stays_bounded() -> None:
    bus = EventBus(buffer=10)
    async with bus.subscribe() as never_read:
        for _ in range(100_000):  # nothing reads meanwhile: a publish that waited would hang
            bus.publish(LOG)
        assert never_read.dropped == 100_000 - 10
        assert len(await asyncio.wait_for(_take(never_read, 10), 2)) == 10


async def _take(events: Subscription, count: int) -> list[dict[str, Any]]:
    return [await anext(events) for _ in range(count)]


async def test_close_ends_waiting_subscribers_after_what_they_hold() -> None:
    bus = EventBus()
    got: list[dict[str, Any]] = []

    async def reader() -> None:
        async with bus.subscribe() as events:
            async for event in events:
                got.append(event)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    assert bus.subscriber_count == 1
    bus.publish(LOG)
    bus.close()
    await asyncio.wait_for(task, 2)
    assert [e["data"] for e in got] == [LOG]
    assert bus.subscriber_count == 0
    bus.publish(LOG)  # a no-op once closed
    async with bus.subscribe() as late:
        assert await asyncio.wait_for(drain(late), 2) == []


async def test_leaving_the_block_unsubscribes() -> None:
    bus = EventBus()
    async with bus.subscribe() as events:
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    assert events.closed
    bus.publish(LOG)
    assert await drain(events) == []


def test_subscription_needs_room() -> None:
    with pytest.raises(ValueError):
        Subscription(None, 0)


# -- the logging handler ---------------------------------------------------------------------


@pytest.fixture
async def logged() -> AsyncIterator[tuple[EventBus, logging.Logger]]:
    bus = EventBus()
    handler = EventLogHandler(bus, asyncio.get_running_loop())
    logger = logging.getLogger("tests.events")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield bus, logger
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        bus.close()


async def test_log_records_become_server_log_events(
    logged: tuple[EventBus, logging.Logger],
) -> None:
    bus, logger = logged
    async with bus.subscribe("server") as events:
        logger.info("listening on %s", "unix:/x.sock")
        logger.warning("careful")
        logger.debug("details")
        logger.error("broken")
        datas = [(await next_event(events))["data"] for _ in range(4)]
    assert datas == [
        {"type": "server.log", "content": "listening on unix:/x.sock", "level": "info"},
        {"type": "server.log", "content": "careful", "level": "warn"},
        {"type": "server.log", "content": "details", "level": "debug"},
        {"type": "server.log", "content": "broken", "level": "error"},
    ]


def test_level_names() -> None:
    assert [level_name(n) for n in (5, 10, 20, 25, 30, 40, 50)] == [
        "debug",
        "debug",
        "info",
        "info",
        "warn",
        "error",
        "error",
    ]


async def test_the_handler_is_safe_from_other_threads(
    logged: tuple[EventBus, logging.Logger],
) -> None:
    bus, logger = logged
    async with bus.subscribe("server") as events:
        threads = [
            threading.Thread(target=lambda n=n: logger.info("from thread %d", n)) for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        contents = {(await next_event(events))["data"]["content"] for _ in range(8)}
    assert contents == {f"from thread {n}" for n in range(8)}


async def test_a_thread_logging_after_the_loop_closed_is_harmless() -> None:
    loop = asyncio.new_event_loop()
    handler = EventLogHandler(EventBus(), loop)
    loop.close()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "late", None, None)
    worker = threading.Thread(target=handler.emit, args=(record,))
    worker.start()
    worker.join()


class LoudBus(EventBus):
    """A bus whose publishing itself logs: the handler must not feed it back."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.calls = 0

    def publish(self, data: dict[str, Any], *, timestamp_ms: int | None = None) -> None:
        self.calls += 1
        self.logger.warning("publishing %s", data["type"])
        super().publish(data, timestamp_ms=timestamp_ms)


async def test_the_handler_never_recurses() -> None:
    logger = logging.getLogger("tests.events.loud")
    logger.propagate = False
    bus = LoudBus(logger)
    handler = EventLogHandler(bus, asyncio.get_running_loop())
    logger.addHandler(handler)
    try:
        async with bus.subscribe() as events:
            logger.warning("once")
            assert bus.calls == 1
            assert (await next_event(events))["data"]["content"] == "once"
            threading.Thread(target=logger.warning, args=("from a thread",)).start()
            assert (await next_event(events))["data"]["content"] == "from a thread"
            assert bus.calls == 2
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


# -- pure event builders -----------------------------------------------------------------------


def test_model_event_shapes() -> None:
    assert INPUT == {
        "type": "llm.prediction.input",
        "input": "hi",
        "modelPath": "pub/repo/m.gguf",
        "modelIdentifier": "m",
    }
    stats = prediction_stats(
        stop_reason="eosFound",
        tokens_per_second=12.5,
        time_to_first_token=0.12345,
        prompt_tokens=7,
        predicted_tokens=3,
    )
    assert prediction_output("m", "out", stats) == {
        "type": "llm.prediction.output",
        "output": "out",
        "stats": {
            "stopReason": "eosFound",
            "tokensPerSecond": 12.5,
            "timeToFirstTokenSec": 0.123,
            "promptTokensCount": 7,
            "predictedTokensCount": 3,
            "totalTokensCount": 10,
        },
        "modelIdentifier": "m",
    }


def test_stats_and_input_from_engine_objects() -> None:
    from daemon.engines.base import DoneEvent, StopReason

    done = DoneEvent(StopReason.EOS, 7, 3, 0.2, 0.5, 6.0)
    assert done_stats(done) == prediction_stats(
        stop_reason="eosFound",
        tokens_per_second=6.0,
        time_to_first_token=0.2,
        prompt_tokens=7,
        predicted_tokens=3,
    )


# -- the route, in-process ---------------------------------------------------------------------


@pytest.fixture
async def served(aiohttp_client: Any, tmp_path: Path) -> tuple[TestClient[Any, Any], EventBus]:
    control = FakeControl(tmp_path)
    core = Core(control.settings, data_dir=tmp_path, state_dir=tmp_path)
    app: web.Application = create_app(control, core)
    _, admin = control.keys.create("ops", "admin")  # the log stream needs one over TCP
    return await aiohttp_client(app, headers={"Authorization": f"Bearer {admin}"}), core.events


async def test_the_route_streams_ndjson_until_the_bus_closes(
    served: tuple[TestClient[Any, Any], EventBus],
) -> None:
    client, bus = served
    response = await client.get(LOG_STREAM_PATH, params={"source": "model"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert await asyncio.wait_for(response.content.readline(), 2) == b"\n"  # subscribed
    bus.publish(LOG)  # not this source
    bus.publish(INPUT)
    line = await asyncio.wait_for(response.content.readline(), 2)
    assert json.loads(line)["data"] == INPUT
    bus.close()
    assert await asyncio.wait_for(response.content.read(), 2) == b""


async def test_the_route_rejects_an_unknown_source(
    served: tuple[TestClient[Any, Any], EventBus],
) -> None:
    client, _ = served
    response = await client.get(LOG_STREAM_PATH, params={"source": "runtime"})
    assert response.status == 400
    body = await response.json()
    assert "model, server" in body["error"]["message"]


async def test_a_client_that_leaves_unsubscribes(
    served: tuple[TestClient[Any, Any], EventBus],
) -> None:
    client, bus = served
    response = await client.get(LOG_STREAM_PATH, params={"source": "server"})
    await asyncio.wait_for(response.content.readline(), 2)
    assert bus.subscriber_count == 1
    response.close()
    deadline = time.monotonic() + 30  # only against a hang: it goes as soon as it notices
    while bus.subscriber_count and time.monotonic() < deadline:
        bus.publish(LOG)  # a write to a closed connection also ends the handler
        await asyncio.sleep(0.02)
    assert bus.subscriber_count == 0
