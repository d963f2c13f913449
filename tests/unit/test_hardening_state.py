"""Issue 12, items 4, 6 and 9: numbers that are no numbers (NaN, infinities, absurd TTLs),
changes of state that are all-or-nothing when the disk refuses them, and small ones
(negative max_tokens, LOCALHOST, malformed requests logged as warnings, CLI usage errors).

The daemon is the real one, in process, reached over its owner-only Unix socket (the
channel `lms` uses), so no access rule of the TCP side is involved."""

import errno
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from typer.testing import CliRunner

import daemon.auth
import daemon.fsutil
from daemon.auth import KeyStore
from daemon.compat.durations import MAX_TTL_SECONDS, parse_seconds, request_ttl
from daemon.compat.fields import in_range, optional
from daemon.compat.requests import parse_params
from daemon.config import Settings, coerce, load_settings, read_config_file
from daemon.errors import ConfigError, InvalidRequest, StateNotSaved
from daemon.http.errors import classify
from daemon.http.security import host_name
from daemon.logs import ClientErrorFilter
from daemon.restore import _ttl, read, save
from daemon.server import Daemon
from lms.units import is_loopback
from tests.inprocess import in_process_daemon

CHAT = [{"role": "user", "content": "hello"}]


def enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# -- item 4: durations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (-1, math.inf),
        (-1.5, math.inf),
        ("-1", math.inf),
        ("-5m", math.inf),
        (0, 0.0),
        ("1e3", 1000.0),
        (MAX_TTL_SECONDS, MAX_TTL_SECONDS),
    ],
)
def test_negative_is_never_and_good_values_stay(value: Any, seconds: float) -> None:
    assert parse_seconds(value, param="keep_alive") == seconds


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        1e308,
        "inf",
        "nan",
        "-inf",
        "-nan",
        "Infinity",
        "1e308",
        10**400,
        MAX_TTL_SECONDS + 1,
        [],
        {},
        True,
        "soon",
    ],
)
@pytest.mark.parametrize("param", ["ttl", "keep_alive"])
def test_non_finite_and_absurd_ttls_are_refused_naming_the_field(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_ttl({param: value})
    assert info.value.param == param
    assert classify(info.value)[0] == 400


# -- item 4: every float field -------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_optional_float_refuses_non_finite(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        optional({"temperature": value}, "temperature", float)
    assert info.value.param == "temperature" and "finite" in str(info.value)


def test_in_range_refuses_nan() -> None:
    with pytest.raises(InvalidRequest):
        in_range("x", math.nan, -math.inf, math.inf)


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": math.nan},
        {"top_p": math.nan},
        {"presence_penalty": math.inf},
        {"frequency_penalty": -math.inf},
        {"repeat_penalty": math.nan},
        {"min_p": math.nan},
        {"logit_bias": {"1": math.nan}},
        {"logit_bias": {"1": 10**400}},
    ],
)
def test_sampling_parameters_refuse_non_finite(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_params(body)
    assert info.value.param == next(iter(body))


# -- item 9: max_tokens --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [-2, -100, 0])
def test_negative_max_tokens_other_than_minus_one_is_400(name: str, value: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_params({name: value})
    assert info.value.param == name


def test_max_tokens_minus_one_is_unlimited() -> None:
    assert parse_params({"max_tokens": -1}).max_tokens is None
    assert parse_params({"max_tokens": 5}).max_tokens == 5


# -- item 4: settings ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["jit_ttl", "shutdown_timeout"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400"])
def test_config_set_refuses_non_finite_seconds(key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce(key, text, "lms server config set", from_text=True)
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("key", ["jit_ttl", "shutdown_timeout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 1e12])
def test_settings_refuse_non_finite_or_absurd_seconds(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**{key: value})
    assert repr(key) in str(info.value)


def test_config_file_with_nan_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("jit_ttl: .nan\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, env={})
    assert str(config) in str(info.value)
    config.write_text("preload:\n  - {model: a, ttl: .inf}\n")
    with pytest.raises(ConfigError, match="preload"):
        read_config_file(config)


# -- item 4: restore -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        (math.nan, None),
        (math.inf, None),
        ("60", None),
        (1e300, None),
        (-1, None),
        (60, 60.0),
        (None, None),
    ],
)
def test_restore_ignores_unusable_ttls(ttl: Any, expected: float | None) -> None:
    assert _ttl({"model": "m", "ttl": ttl}) == expected


def test_restore_file_never_holds_nan_or_infinity(tmp_path: Path) -> None:
    path = tmp_path / "loaded.json"
    save(path, [{"model": "a", "ttl": math.inf}, {"model": "b", "ttl": 5.0}])
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert [e["ttl"] for e in read(path)] == [None, 5.0]


# -- the daemon in process, over its Unix socket -------------------------------------------


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Daemon]:
    daemon = in_process_daemon(tmp_path, http=False)
    daemon.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


@pytest.fixture
async def session(running: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path=str(running.paths.socket))
    async with aiohttp.ClientSession("http://lmsd", connector=connector) as session:
        yield session


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, path, json=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("field", [{"keep_alive": -1}, {"ttl": -1}, {"keep_alive": "-5m"}])
async def test_never_unload_lists_as_null_ttl(
    session: aiohttp.ClientSession, field: dict[str, Any]
) -> None:
    status, _ = await call(
        session,
        "POST",
        "/v1/chat/completions",
        {"model": "echo", "messages": CHAT, "max_tokens": 2, **field},
    )
    assert status == 200
    status, [instance] = await call(session, "GET", "/api/admin/instances")
    assert status == 200
    assert instance["ttlMs"] is None and instance["ttlRemainingMs"] is None


@pytest.mark.parametrize("ttl", ["NaN", "Infinity", "1e308", '"inf"', '"nan"', "1e400"])
@pytest.mark.parametrize("path", ["/api/v1/models/load", "/v1/chat/completions"])
async def test_bad_ttls_are_400_and_nothing_is_loaded(
    session: aiohttp.ClientSession, running: Daemon, ttl: str, path: str
) -> None:
    raw = '{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "ttl": ' + ttl + "}"
    async with session.post(path, data=raw, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["param"] == "ttl"
    assert running.core.manager.instances() == []
    status, listing = await call(session, "GET", "/api/admin/instances")
    assert (status, listing) == (200, [])


async def test_load_with_ttl_minus_one_never_unloads(
    session: aiohttp.ClientSession, running: Daemon
) -> None:
    status, reply = await call(session, "POST", "/api/v1/models/load", {"model": "echo", "ttl": -1})
    assert status == 200 and reply["instance"]["ttlMs"] is None
    assert running.core.manager.manual_loads()[0]["ttl"] is None


async def test_config_set_nan_is_400_and_not_saved(
    session: aiohttp.ClientSession, running: Daemon
) -> None:
    for key in ("jit_ttl", "shutdown_timeout"):
        status, body = await call(
            session, "POST", "/api/admin/config", {"key": key, "value": "nan"}
        )
        assert status == 400 and key in body["error"]["message"]
    assert not running.config_file.exists()
    assert running.settings.jit_ttl == Settings().jit_ttl


# -- item 6: all or nothing ----------------------------------------------------------------


def test_key_create_that_cannot_be_saved_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(tmp_path / "keys.json")
    monkeypatch.setattr(daemon.auth, "atomic_write_text", enospc)
    with pytest.raises(StateNotSaved) as info:
        store.create("ci", "admin")
    assert str(store.path) in str(info.value) and "No space left" in str(info.value)
    assert store.all() == []
    assert not store.path.exists()


def test_key_revoke_that_cannot_be_saved_keeps_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, secret = store.create("ci", "admin")
    monkeypatch.setattr(daemon.auth, "atomic_write_text", enospc)
    with pytest.raises(StateNotSaved):
        store.revoke("ci")
    # Memory and disk agree: the key still works, now and after a restart.
    assert store.check(secret) == key
    assert KeyStore(store.path).check(secret) == key


async def test_key_routes_report_an_unwritable_state_dir(
    session: aiohttp.ClientSession, running: Daemon, tmp_path: Path
) -> None:
    status, _ = await call(session, "POST", "/api/admin/keys", {"name": "first"})
    assert status == 200
    # A real unwritable place, even for root: the keys' folder is a file.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    original = running.keys.path
    running.keys.path = blocker / "api-keys.json"
    status, body = await call(session, "POST", "/api/admin/keys", {"name": "second"})
    assert status == 500 and body["error"]["code"] == "state_not_saved"
    assert str(blocker) in body["error"]["message"]
    status, body = await call(session, "DELETE", "/api/admin/keys/first")
    assert status == 500 and "Internal server error" not in body["error"]["message"]
    running.keys.path = original
    status, listing = await call(session, "GET", "/api/admin/keys")
    assert [k["name"] for k in listing] == ["first"]
    assert [k.name for k in KeyStore(original).all()] == ["first"]


async def test_config_set_that_cannot_be_saved_changes_nothing(
    session: aiohttp.ClientSession, running: Daemon, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    running.config_file = blocker / "config.yaml"
    status, body = await call(
        session, "POST", "/api/admin/config", {"key": "jit_ttl", "value": "60"}
    )
    assert status == 500
    assert str(running.config_file) in body["error"]["message"]
    assert "Internal server error" not in body["error"]["message"]
    assert running.settings.jit_ttl == Settings().jit_ttl
    assert running.core.manager.settings.jit_ttl == Settings().jit_ttl


async def test_refused_bind_is_not_saved(session: aiohttp.ClientSession, running: Daemon) -> None:
    status, body = await call(
        session, "POST", "/api/admin/config", {"key": "bind", "value": "0.0.0.0"}
    )
    assert status == 409 and "API key" in body["error"]["message"]
    assert not running.config_file.exists()
    assert running.settings.bind == "127.0.0.1"
    assert running.status()["http"]["bind"] == "127.0.0.1"


async def test_busy_port_is_not_saved_and_the_listener_stays(
    session: aiohttp.ClientSession, running: Daemon
) -> None:
    await running.start_http(port=0, bind=None, cors=None)
    before = running.status()["http"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        status, body = await call(
            session, "POST", "/api/admin/config", {"key": "port", "value": str(taken)}
        )
    assert status == 409 and str(taken) in body["error"]["message"]
    assert not running.config_file.exists()
    assert running.status()["http"] == before


async def test_listener_moves_back_when_the_port_cannot_be_saved(
    session: aiohttp.ClientSession, running: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await running.start_http(port=0, bind=None, cors=None)
    before = running.status()["http"]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        wanted = free.getsockname()[1]
    moves: list[int | None] = []
    real_start = running.start_http

    async def spy(*, port: int | None, bind: str | None, cors: list[str] | None) -> None:
        moves.append(port)
        await real_start(port=port, bind=bind, cors=cors)

    monkeypatch.setattr(running, "start_http", spy)
    monkeypatch.setattr(daemon.fsutil, "atomic_write_text", enospc)
    status, body = await call(
        session, "POST", "/api/admin/config", {"key": "port", "value": str(wanted)}
    )
    assert status == 500 and "No space left on device" in body["error"]["message"]
    assert moves == [wanted, before["port"]]  # moved, then moved back
    assert running.status()["http"] == before
    assert running.settings.port == Settings().port


# -- item 9: LOCALHOST, logs, CLI ----------------------------------------------------------


@pytest.mark.parametrize("host", ["LOCALHOST", "LocalHost", "localhost.", "API.LOCALHOST"])
def test_host_names_are_case_insensitive(host: str) -> None:
    assert is_loopback(host)
    assert is_loopback(host_name(f"{host}:1234"))


def test_other_hosts_are_not_loopback() -> None:
    assert not is_loopback("example.com") and not is_loopback("localhost.example.com")


async def test_host_header_in_capitals_is_accepted_over_tcp(tmp_path: Path) -> None:
    daemon = in_process_daemon(tmp_path, port=0)
    daemon.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    await daemon.start()
    try:
        port = daemon.status()["http"]["port"]
        async with aiohttp.ClientSession() as client:
            for host in (f"LOCALHOST:{port}", f"LocalHost:{port}"):
                async with client.get(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Host": host}
                ) as response:
                    assert response.status == 200, host
            async with client.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"Host": "evil.example"}
            ) as response:
                assert response.status == 403
    finally:
        await daemon.close()


async def test_malformed_request_is_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(error_filter := ClientErrorFilter())
    daemon = in_process_daemon(tmp_path, port=0)
    daemon.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    await daemon.start()
    try:
        port = daemon.status()["http"]["port"]
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            writer.write(b"GET /\x01\x02 HTTP/9.9 nonsense\r\n\r\n")
            await writer.drain()
            reply = await reader.read(100)
            writer.close()
        assert b" 400 " in reply.split(b"\r\n")[0]
    finally:
        server_log.removeFilter(error_filter)
        await daemon.close()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.WARNING for r in records)
    assert all(r.exc_info is None for r in records)
    assert "Error handling request" in records[0].getMessage()


def test_filter_leaves_server_errors_alone() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "boom", None, None)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    ClientErrorFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_setup_logging_installs_the_filter(tmp_path: Path) -> None:
    from daemon.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", log_file=tmp_path / "lmsd.log")
        assert any(
            isinstance(f, ClientErrorFilter) for f in logging.getLogger("aiohttp.server").filters
        )
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    from lms.cli.main import app

    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "args",
    [
        ("ps", "--port", "99999"),
        ("ps", "--port", "-3"),
        ("status", "--port", "0"),
        ("load", "x", "--gpu", "7"),
        ("load", "x", "--gpu", "lots"),
        ("load", "x", "--ttl", "abc"),
        ("server", "start", "--port", "99999"),
        ("server", "key", "create", "--scope", "bogus"),
        ("ps", "--bogus"),
    ],
)
def test_bad_option_values_exit_2_without_asking_the_daemon(
    cli: Callable[..., Any], args: tuple[str, ...]
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output


def test_startup_failure_is_not_error_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lms.cli import spawn

    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    log_file = spawn.resolve_paths().startup_log_file
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("lmsd: error: cannot listen on 127.0.0.1:1234: Address in use\n")
    assert spawn._startup_failure(1) == "cannot listen on 127.0.0.1:1234: Address in use"
    log_file.write_text("lmsd: configuration error: 'prot' is unknown\n")
    assert spawn._startup_failure(2) == "configuration error: 'prot' is unknown"


def test_yaml_of_saved_config_is_plain(tmp_path: Path) -> None:
    from daemon.config import save_setting

    config = tmp_path / "config.yaml"
    save_setting(config, "jit_ttl", 60.0)
    assert yaml.safe_load(config.read_text()) == {"jit_ttl": 60.0}
    assert json.loads(json.dumps(read_config_file(config))) == {"jit_ttl": 60.0}


async def test_config_set_on_a_full_disk_changes_nothing(
    session: aiohttp.ClientSession, running: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon.fsutil, "atomic_write_text", enospc)
    status, body = await call(
        session, "POST", "/api/admin/config", {"key": "log_level", "value": "debug"}
    )
    assert status == 500 and body["error"]["code"] == "state_not_saved"
    assert str(running.config_file) in body["error"]["message"]
    assert "No space left on device" in body["error"]["message"]
    assert running.settings.log_level == "info"
