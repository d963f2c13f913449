"""Load progress at the surfaces, the whole daemon in process with the fake engine: the
streamed `POST /api/v1/models/load`, `lms load`'s progress (plain lines off a terminal,
nothing with --json) and Ctrl-C, which abandons the load in the daemon."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from daemon.engines.fake_impl import GGUF_OPTIONS_KEY
from daemon.server import Daemon
from lms.api.load_stream import LoadEvent
from lms.cli.main import app
from lms.client import Client
from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, write_gguf
from tests.inprocess import in_process_daemon

NO_HANG = 60.0  # seconds: only so that a broken behaviour fails instead of hanging


def write_slow_model(root: Path, key: str, load_delay: float) -> None:
    write_gguf(
        root / "models" / "test" / key / f"{key}-Q4_K_M.gguf",
        arch="llama",
        name=key,
        chat_template=PLAIN_TEMPLATE,
        context_length=4096,
        extra={GGUF_OPTIONS_KEY: json.dumps({"load_delay": load_delay})},
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    write_slow_model(tmp_path, "slowpoke", 0.05)
    write_slow_model(tmp_path, "glacial", 600)
    daemon = in_process_daemon(tmp_path, http=False)
    daemon.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


@pytest.fixture
async def session(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=str(daemon.paths.socket))
    async with aiohttp.ClientSession("http://lmsd", connector=connector) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


async def wait_until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), NO_HANG)


# -- the API ------------------------------------------------------------------------------


async def test_a_streamed_load_sends_start_progress_and_end_with_the_reply(
    session: aiohttp.ClientSession,
) -> None:
    async with session.post(
        "/api/v1/models/load", json={"model": "slowpoke", "stream": True}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = await read_events(response)
    names = [name for name, _ in events]
    assert names[0] == "model_load.start" and names[-1] == "model_load.end"
    assert set(names[1:-1]) == {"model_load.progress"}
    assert all(data["type"] == name for name, data in events)
    assert {data["model_instance_id"] for _, data in events} == {"slowpoke"}
    progress = [data["progress"] for name, data in events if name == "model_load.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(progress) > 2, "the steps between 0 and 1 are streamed as they happen"
    end = events[-1][1]
    assert end["result"]["status"] == "loaded" and end["result"]["instance_id"] == "slowpoke"
    assert end["load_time_seconds"] == end["result"]["load_time_seconds"]


async def test_a_load_refused_before_it_starts_is_a_plain_error(
    session: aiohttp.ClientSession,
) -> None:
    async with session.post(
        "/api/v1/models/load", json={"model": "no-such-model", "stream": True}
    ) as response:
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("application/json")


async def test_a_load_failing_before_its_engine_reports_is_a_plain_error(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    manager = daemon.core.manager
    # The guardrail refuses every load, once the instance is registered and loading.
    manager.settings = dataclasses.replace(manager.settings, max_model_memory=1)
    async with session.post(
        "/api/v1/models/load", json={"model": "slowpoke", "stream": True}
    ) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.status >= 400
    assert manager.instances() == []


async def test_a_load_failing_after_it_started_ends_with_an_error_event(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        "/api/v1/models/load", json={"model": "glacial", "stream": True}
    ) as response:
        events: list[str] = []
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            progressing = events[-1:] == ["model_load.progress"] and line.startswith("data: ")
            if progressing and events.count("model_load.progress") == 1:  # loading: unload it
                await daemon.core.manager.unload("glacial")
            if line.startswith("data: ") and events[-1] == "error":
                error = json.loads(line.removeprefix("data: "))["error"]
                assert "cancelled" in error["message"] or "unloaded" in error["message"]
    assert events[0] == "model_load.start" and events[-1] == "error"


async def test_a_client_that_goes_away_abandons_the_load(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    manager = daemon.core.manager
    response = await session.post("/api/v1/models/load", json={"model": "glacial", "stream": True})
    async for raw in response.content:
        if raw.startswith(b"data: ") and b"model_load.progress" in raw:
            break  # it is loading
    assert [i.identifier for i in manager.instances()] == ["glacial"]
    response.close()  # the client goes away
    await wait_until(lambda: not manager.instances())


# -- a just-in-time load in a streamed REST v1 chat -----------------------------------------


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "input": "Say hello", "stream": True, "max_output_tokens": 3}


async def test_a_streamed_v1_chat_tells_its_jit_load_as_it_goes(
    session: aiohttp.ClientSession,
) -> None:
    async with session.post("/api/v1/chat", json=chat_body("slowpoke")) as response:
        assert response.status == 200
        events = await read_events(response)
    names = [name for name, _ in events]
    end_of_load = names.index("model_load.end")
    assert names[:2] == ["chat.start", "model_load.start"]
    assert set(names[2:end_of_load]) == {"model_load.progress"}
    progress = [data["progress"] for name, data in events if name == "model_load.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(progress) > 2, "the steps between 0 and 1 are streamed as they happen"
    assert names[end_of_load + 1] == "prompt_processing.start"
    assert names[-1] == "chat.end" and "message.delta" in names
    assert all(data["type"] == name for name, data in events)
    load_time = events[end_of_load][1]["load_time_seconds"]
    assert load_time == events[-1][1]["result"]["stats"]["model_load_time_seconds"]
    # Loaded now: a second chat has no load events.
    async with session.post("/api/v1/chat", json=chat_body("slowpoke")) as response:
        again = [name for name, _ in await read_events(response)]
    assert again[0] == "chat.start" and not [n for n in again if n.startswith("model_load")]


async def test_a_v1_chat_whose_jit_load_fails_after_it_started_ends_with_an_error_event(
    daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    async with session.post("/api/v1/chat", json=chat_body("glacial")) as response:
        assert response.status == 200
        events: list[str] = []
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            progressing = events[-1:] == ["model_load.progress"] and line.startswith("data: ")
            if progressing and events.count("model_load.progress") == 1:  # loading: unload it
                await daemon.core.manager.unload("glacial")
    assert events[:2] == ["chat.start", "model_load.start"] and events[-1] == "error"
    assert "chat.end" not in events


async def test_a_v1_chat_refused_before_any_load_is_a_plain_error(
    session: aiohttp.ClientSession,
) -> None:
    async with session.post("/api/v1/chat", json=chat_body("no-such-model")) as response:
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("application/json")


# -- lms load -----------------------------------------------------------------------------


@pytest.fixture
def lms(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("LMS_RUNTIME_DIR", str(daemon.paths.runtime_dir))

    async def run(*args: str) -> Result:
        # The CLI blocks on its socket: it runs on a thread while the daemon serves here.
        return await asyncio.to_thread(CliRunner().invoke, app, list(args))

    return run


async def test_lms_load_prints_its_progress_as_lines_off_a_terminal(lms: Any) -> None:
    result = await lms("load", "slowpoke")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Loading slowpoke:")]
    assert lines[0] == "Loading slowpoke: 0%" and lines[-1] == "Loading slowpoke: 100%"
    assert len(lines) <= 11, "a line per tenth, not per percent"
    assert "Model loaded successfully" in result.stderr


async def test_lms_load_draws_a_bar_on_a_terminal(
    lms: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lms.cli.load_progress.on_terminal", lambda: True)
    result = await lms("load", "slowpoke")
    assert result.exit_code == 0, result.output
    assert "Loading slowpoke: " not in result.stderr, "a bar, not lines"
    assert "Model loaded successfully" in result.stderr


async def test_lms_load_json_prints_no_progress(lms: Any) -> None:
    result = await lms("load", "slowpoke", "--json")
    assert result.exit_code == 0, result.output
    assert "Loading" not in result.stderr
    assert json.loads(result.stdout)["instance_id"] == "slowpoke"


async def test_ctrl_c_in_lms_load_cancels_the_load_in_the_daemon(
    lms: Any, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Client.load_stream

    def interrupted(self: Client, body: Any) -> Generator[LoadEvent, None, None]:
        events = real(self, body)
        try:
            for event in events:
                yield event
                if event["type"] == "model_load.progress":
                    raise KeyboardInterrupt  # the user presses Ctrl-C while it loads
        finally:
            events.close()

    monkeypatch.setattr(Client, "load_stream", interrupted)
    result = await lms("load", "glacial")
    assert result.exit_code == 130
    assert "Load cancelled." in result.stderr
    await wait_until(lambda: not daemon.core.manager.instances())
