"""Per-model load defaults, the whole daemon in process with the fake engine: set, read
and reset through the admin routes and `lms model-defaults`, refused values never saved,
and every load of the model (the load API, `lms load`, a JIT load from a chat request)
starting from them while what the load names still wins."""

import asyncio
import errno
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from daemon.model_defaults import FILE_NAME, ModelDefaults
from daemon.server import Daemon
from lms.cli.main import app
from tests.inprocess import in_process_daemon

PATH = "/api/admin/model-defaults"
ECHO_PATH = "test/echo/echo-Q4_K_M.gguf"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
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


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, path, json=body) as response:
        return response.status, await response.json()


def saved(daemon: Daemon) -> Any:
    file = daemon.paths.config_dir / FILE_NAME
    return json.loads(file.read_text()) if file.exists() else None


async def set_defaults(session: aiohttp.ClientSession, **settings: Any) -> Any:
    status, body = await call(session, "POST", PATH, {"model": "echo", "set": settings})
    assert status == 200, body
    return body


async def instance(session: aiohttp.ClientSession, identifier: str) -> Any:
    _, listing = await call(session, "GET", "/api/admin/instances")
    return next(i for i in listing if i["identifier"] == identifier)


# -- reading and writing them -------------------------------------------------------------


async def test_set_get_list_and_reset(daemon: Daemon, session: aiohttp.ClientSession) -> None:
    entry = await set_defaults(session, context_length=512, parallel=3, ttl=600, gpu="off")
    expected = {"context_length": 512, "gpu": 0.0, "parallel": 3, "ttl": 600.0}
    assert entry == {"model": "echo", "path": ECHO_PATH, "defaults": expected}
    assert saved(daemon) == {"models": {ECHO_PATH: expected}}
    assert (await call(session, "GET", f"{PATH}?model=echo"))[1] == entry
    status, listing = await call(session, "GET", PATH)
    assert status == 200 and listing["models"] == [entry]
    assert {"context_length", "parallel", "gpu", "ttl"} <= set(listing["settings"])
    # A null removes one setting; reset removes the named ones, or all.
    entry = await set_defaults(session, gpu=None)
    assert "gpu" not in entry["defaults"]
    _, entry = await call(session, "POST", PATH, {"model": "echo", "reset": ["ttl"]})
    assert entry["defaults"] == {"context_length": 512, "parallel": 3}
    _, entry = await call(session, "POST", PATH, {"model": "echo", "reset": True})
    assert entry["defaults"] == {} and saved(daemon) == {"models": {}}


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"context_length": 10**6}, "context_length"),  # beyond what the model supports
        ({"parallel": 0}, "parallel"),
        ({"context_length": "big"}, "context_length"),
        ({"gpu": 2}, "gpu"),
        ({"ttl": "forever"}, "ttl"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
async def test_a_refused_value_is_400_and_nothing_is_saved(
    daemon: Daemon, session: aiohttp.ClientSession, settings: dict[str, Any], param: str
) -> None:
    await set_defaults(session, context_length=512)
    before = saved(daemon)
    status, body = await call(
        session, "POST", PATH, {"model": "echo", "set": {"parallel": 2, **settings}}
    )
    assert status == 400 and body["error"]["param"] == param
    assert saved(daemon) == before, "all or nothing: not even parallel was saved"
    assert daemon.core.model_defaults.wire(ECHO_PATH) == {"context_length": 512}


async def test_an_unknown_model_is_404(session: aiohttp.ClientSession) -> None:
    status, _ = await call(session, "POST", PATH, {"model": "nope", "set": {"parallel": 2}})
    assert status == 404


async def test_a_change_that_cannot_be_saved_changes_nothing(
    daemon: Daemon, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    await set_defaults(session, parallel=2)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr("daemon.model_defaults.atomic_write_text", disk_full)
    status, body = await call(session, "POST", PATH, {"model": "echo", "set": {"parallel": 3}})
    assert status >= 500 and body["error"]["code"] == "state_not_saved"
    assert daemon.core.model_defaults.wire(ECHO_PATH) == {"parallel": 2}


def test_they_are_read_back_at_start_and_bad_entries_skipped(tmp_path: Path) -> None:
    file = tmp_path / FILE_NAME
    file.write_text(
        json.dumps({"models": {"a.gguf": {"parallel": 3, "ttl": -1}, "b.gguf": {"parallel": "x"}}})
    )
    defaults = ModelDefaults(file)
    assert defaults.wire("a.gguf") == {"parallel": 3, "ttl": -1}
    assert defaults.settings("a.gguf").ttl == float("inf")
    assert defaults.wire("b.gguf") == {}


# -- every load starts from them ----------------------------------------------------------


async def test_an_api_load_starts_from_them_and_its_fields_win(
    session: aiohttp.ClientSession,
) -> None:
    await set_defaults(session, context_length=512, parallel=3, ttl=600)
    status, reply = await call(session, "POST", "/api/v1/models/load", {"model": "echo"})
    assert status == 200
    inst = reply["instance"]
    assert (inst["contextLength"], inst["parallel"], inst["ttlMs"]) == (512, 3, 600_000)
    status, reply = await call(
        session,
        "POST",
        "/api/v1/models/load",
        {"model": "echo", "identifier": "mine", "context_length": 256, "ttl": -1},
    )
    inst = reply["instance"]
    assert (inst["contextLength"], inst["parallel"], inst["ttlMs"]) == (256, 3, None)


async def test_the_estimate_starts_from_them(session: aiohttp.ClientSession) -> None:
    await set_defaults(session, context_length=512)
    _, reply = await call(
        session, "POST", "/api/v1/models/load", {"model": "echo", "estimate_only": True}
    )
    assert reply["context_length"] == 512


async def test_a_jit_load_starts_from_them(session: aiohttp.ClientSession) -> None:
    await set_defaults(session, context_length=512, parallel=3, ttl=600)
    status, _ = await call(
        session,
        "POST",
        "/v1/chat/completions",
        {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert status == 200
    inst = await instance(session, "echo")
    assert inst["origin"] == "jit"
    assert (inst["contextLength"], inst["parallel"], inst["ttlMs"]) == (512, 3, 600_000)


# -- lms model-defaults and lms load ------------------------------------------------------


@pytest.fixture
def lms(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("LMS_RUNTIME_DIR", str(daemon.paths.runtime_dir))

    async def run(*args: str) -> Result:
        # The CLI blocks on its socket: it runs on a thread while the daemon serves here.
        return await asyncio.to_thread(CliRunner().invoke, app, list(args))

    return run


async def test_lms_sets_them_and_lms_load_starts_from_them(
    lms: Any, daemon: Daemon, session: aiohttp.ClientSession
) -> None:
    result = await lms("model-defaults", "set", "echo", "--context-length", "512", "--ttl=5m")
    assert result.exit_code == 0, result.output
    assert "context_length  512" in result.stdout
    result = await lms("model-defaults", "get", "echo", "--json")
    assert json.loads(result.stdout)["defaults"] == {"context_length": 512, "ttl": 300.0}
    result = await lms("load", "echo", "--parallel", "3")
    assert result.exit_code == 0, result.output
    inst = await instance(session, "echo")
    assert (inst["contextLength"], inst["parallel"], inst["ttlMs"]) == (512, 3, 300_000)
    result = await lms("model-defaults", "list")
    assert result.stdout.startswith("echo  context_length=512, ttl=300.0")
    result = await lms("model-defaults", "reset", "echo", "ttl")
    assert result.exit_code == 0 and daemon.core.model_defaults.wire(ECHO_PATH) == {
        "context_length": 512
    }


async def test_lms_load_flag_names_are_taken(lms: Any, daemon: Daemon) -> None:
    result = await lms(
        "model-defaults", "set", "echo", "--no-mmap", "--keep-in-memory", "--threads", "1"
    )
    assert result.exit_code == 0, result.output
    assert daemon.core.model_defaults.wire(ECHO_PATH) == {
        "use_mmap": False,
        "keep_model_in_memory": True,
        "threads": 1,
    }


async def test_lms_refuses_a_bad_value_with_exit_2(lms: Any, daemon: Daemon) -> None:
    result = await lms("model-defaults", "set", "echo", "--parallel", "0")
    assert result.exit_code == 2 and "parallel" in result.stderr
    result = await lms("model-defaults", "set", "echo")
    assert result.exit_code == 2, "no setting named"
    assert saved(daemon) is None
