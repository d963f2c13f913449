"""The typed client against a stand-in daemon: a stdlib HTTP server, over a Unix socket
(as `lms` reaches lmsd) or TCP, that answers canned replies with or without the API
version header and records what it was sent."""

import contextlib
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lms.api import admin, lifecycle, log, models, settings
from lms.api.version import API_VERSION, API_VERSION_HEADER
from lms.client import (
    ApiError,
    ApiVersionMismatch,
    Client,
    ClientError,
    DaemonNotRunning,
    StreamError,
)

# -- canned replies, in the daemon's shapes ---------------------------------------------

MODEL: models.ModelInfo = {
    "type": "llm",
    "modelKey": "qwen2.5-0.5b-instruct",
    "format": "gguf",
    "displayName": "Qwen2.5 0.5B Instruct",
    "publisher": "lmstudio-community",
    "path": "lmstudio-community/Qwen2.5-0.5B-Instruct-GGUF/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf",
    "sizeBytes": 397_807_936,
    "indexedModelIdentifier": (
        "lmstudio-community/Qwen2.5-0.5B-Instruct-GGUF/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    ),
    "deviceIdentifier": None,
    "paramsString": "0.5B",
    "architecture": "qwen2",
    "quantization": {"name": "Q4_K_M", "bits": 4},
    "maxContextLength": 32768,
    "vision": False,
    "trainedForToolUse": True,
}
INSTANCE: lifecycle.InstanceInfo = {
    **MODEL,
    "identifier": "qwen2.5-0.5b-instruct",
    "state": "loaded",
    "status": "idle",
    "origin": "manual",
    "ttlMs": 3_600_000,
    "ttlRemainingMs": 3_540_000,
    "lastUsedTime": 1_700_000_000_000,
    "contextLength": 4096,
    "parallel": 4,
    "inFlight": 0,
    "queued": 0,
    "memoryBytes": 612_000_000,
    "loadTimeSeconds": 1.234,
    "pid": 4242,
    "device": "CPU",
    "gpuLayers": 0,
}
LISTENER: admin.HttpListener = {"running": True, "bind": "127.0.0.1", "port": 1234, "cors": []}


def status_reply(api_version: int = API_VERSION, pid: int = 4242) -> admin.DaemonStatus:
    return {
        "status": "running",
        "version": "0.0.9",
        "api_version": api_version,
        "pid": pid,
        "uptime_seconds": 12.5,
        "socket": "/run/user/1000/lmsd/lmsd.sock",
        "http": LISTENER,
    }


# -- the stand-in daemon ----------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    body: Any


@dataclass
class Canned:
    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass
class FakeDaemon:
    """Answers `(method, path with query)` from `replies`; anything else is a 404 in the
    OpenAI error envelope. `version` is the header value sent (None: no header)."""

    version: str | None = str(API_VERSION)
    replies: dict[tuple[str, str], Canned] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    socket_path: Path | None = None
    port: int | None = None

    def reply(self, method: str, path: str, payload: Any, status: int = 200) -> None:
        self.replies[(method, path)] = Canned(status, json.dumps(payload).encode())

    def reply_lines(self, method: str, path: str, lines: list[str], content_type: str) -> None:
        self.replies[(method, path)] = Canned(
            200, "".join(f"{x}\n" for x in lines).encode(), content_type
        )

    def client(self, timeout: float = 5.0) -> Client:
        if self.socket_path is not None:
            return Client(socket_path=self.socket_path, timeout=timeout)
        return Client(host="127.0.0.1", port=self.port, timeout=timeout)


class Handler(BaseHTTPRequestHandler):
    server: "Any"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet (and a Unix socket peer has no address to print)

    def _answer(self) -> None:
        fake: FakeDaemon = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake.seen.append(Seen(self.command, self.path, json.loads(raw) if raw else None))
        canned = fake.replies.get((self.command, self.path))
        if canned is None:
            envelope = {"error": {"message": "unknown route", "type": "invalid_request_error"}}
            canned = Canned(404, json.dumps(envelope).encode())
        self.send_response(canned.status)
        self.send_header("Content-Type", canned.content_type)
        self.send_header("Content-Length", str(len(canned.body)))
        if fake.version is not None:
            self.send_header(API_VERSION_HEADER, fake.version)
        self.end_headers()
        # The client may stop reading: a refused version, a closed stream.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(canned.body)

    do_GET = do_POST = do_DELETE = _answer


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A Unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="lms-cc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve(server: socketserver.BaseServer, fake: FakeDaemon) -> Iterator[FakeDaemon]:
    server.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[FakeDaemon]:
    """Over a Unix socket, where `lms` (with no --host/--port) finds lmsd."""
    socket_path = short_dir / "lmsd.sock"
    yield from _serve(
        UnixHTTPServer(str(socket_path), Handler), FakeDaemon(socket_path=socket_path)
    )


@pytest.fixture
def tcp_fake() -> Iterator[FakeDaemon]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    yield from _serve(server, FakeDaemon(port=server.server_address[1]))


# -- typed methods: method, path, body, parsed reply ------------------------------------

Call = Callable[[Client], Any]
# fmt: off
CASES: list[tuple[str, Call, str, str, Any, Any]] = [
    # name, call, method, path (with query), body sent, reply
    ("status", lambda c: c.status(), "GET", admin.STATUS_PATH, None, status_reply()),
    ("shutdown", lambda c: c.shutdown(), "POST", admin.SHUTDOWN_PATH, {},
     {"status": "stopping", "pid": 4242}),
    ("server_start", lambda c: c.server_start({"port": 1235, "cors": ["*"]}), "POST",
     admin.SERVER_START_PATH, {"port": 1235, "cors": ["*"]}, LISTENER),
    ("server_stop", lambda c: c.server_stop(), "POST", admin.SERVER_STOP_PATH, {},
     {"stopped": True, **LISTENER, "running": False}),
    ("load", lambda c: c.load({"model": "qwen", "ttl": 60, "gpu": "max", "force": True}),
     "POST", lifecycle.LOAD_PATH, {"model": "qwen", "ttl": 60, "gpu": "max", "force": True},
     {"type": "llm", "instance_id": "qwen", "load_time_seconds": 1.2, "status": "loaded",
      "already_loaded": False, "instance": INSTANCE}),
    ("estimate", lambda c: c.estimate({"model": "qwen", "context_length": 8192}), "POST",
     lifecycle.LOAD_PATH, {"model": "qwen", "context_length": 8192, "estimate_only": True},
     {"model": "qwen2.5-0.5b-instruct", "context_length": 8192, "gpu_ratio": None,
      "estimate": {"weights_bytes": 1, "kv_cache_bytes": 2, "overhead_bytes": 3,
                   "total_bytes": 6},
      "available_bytes": 10, "allowed_bytes": 8, "guardrail": "balanced",
      "passes_guardrails": True}),
    ("unload", lambda c: c.unload("my model"), "POST", lifecycle.UNLOAD_PATH,
     {"instance_id": "my model"}, {"instance_id": "my model"}),
    ("unload_all", lambda c: c.unload_all(), "POST", lifecycle.UNLOAD_PATH, {"all": True},
     {"unloaded": ["a", "b"]}),
    ("instances", lambda c: c.instances(), "GET", lifecycle.INSTANCES_PATH, None, [INSTANCE]),
    ("match", lambda c: c.match("qwen 0.5b"), "GET", lifecycle.MATCH_PATH + "?q=qwen+0.5b",
     None, {"exact": None, "candidates": [MODEL]}),
    ("match exact", lambda c: c.match(MODEL["path"], exact=True), "GET",
     lifecycle.MATCH_PATH
     + "?q=lmstudio-community%2FQwen2.5-0.5B-Instruct-GGUF%2FQwen2.5-0.5B-Instruct-Q4_K_M.gguf"
     "&exact=1", None, {"exact": MODEL, "candidates": []}),
    ("models", lambda c: c.models(), "GET", models.ADMIN_MODELS_PATH, None,
     {"models": [{**MODEL, "loaded": 1}, {**MODEL, "loaded": 0, "error": "bad header"}],
      "models_dirs": ["/models"]}),
    ("import_model", lambda c: c.import_model("/tmp/x.gguf", mode="copy", dry_run=True), "POST",
     models.ADMIN_IMPORT_PATH,
     {"path": "/tmp/x.gguf", "mode": "copy", "user_repo": None, "dry_run": True},
     {"source": "/tmp/x.gguf", "target": "/models/local/x/x.gguf", "mode": "copy",
      "user_repo": "local/x", "dry_run": True, "warnings": []}),
    ("config", lambda c: c.config(), "GET", settings.CONFIG_PATH, None,
     {"settings": {"port": 1234}, "defaults": {"port": 1234}, "help": {"port": "TCP port"},
      "config_file": "/c/config.yaml"}),
    ("set_config", lambda c: c.set_config("cors", ["*"]), "POST", settings.CONFIG_PATH,
     {"key": "cors", "value": ["*"]},
     {"key": "cors", "value": ["*"], "applied": "live", "config_file": "/c/config.yaml"}),
    ("keys", lambda c: c.keys(), "GET", settings.KEYS_PATH, None,
     [{"id": "ab12cd34", "name": "ci", "scope": "admin", "created": 1, "hint": "lms-abcd…"}]),
    ("create_key", lambda c: c.create_key("ci", "admin"), "POST", settings.KEYS_PATH,
     {"name": "ci", "scope": "admin"},
     {"id": "ab12cd34", "name": "ci", "scope": "admin", "created": 1, "hint": "lms-abcd…",
      "key": "lms-abcdef"}),
    ("revoke_key", lambda c: c.revoke_key("my key/1"), "DELETE",
     settings.KEYS_PATH + "/my%20key%2F1", None,
     {"id": "ab12cd34", "name": "my key/1", "scope": "inference", "created": 1,
      "hint": "lms-abcd…"}),
]
# fmt: on


@pytest.mark.parametrize(
    ("call", "method", "path", "body", "reply"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_typed_method_sends_the_request_and_returns_the_reply(
    fake: FakeDaemon, call: Call, method: str, path: str, body: Any, reply: Any
) -> None:
    fake.reply(method, path, reply)
    assert call(fake.client()) == reply
    assert fake.seen == [Seen(method, path, body)]


def test_log_stream_returns_once_subscribed_and_yields_the_events(fake: FakeDaemon) -> None:
    events: list[log.LogEvent] = [
        {"timestamp": 1, "data": {"type": "server.log", "content": "hi", "level": "info"}},
        {"timestamp": 2, "data": {"type": "llm.prediction.output", "output": "ok"}},
    ]
    lines = ["", json.dumps(events[0]), "", "not json", "[1, 2]", json.dumps(events[1])]
    fake.reply_lines("GET", log.LOG_STREAM_PATH + "?source=server", lines, "application/x-ndjson")
    stream = fake.client().log_stream("server")
    assert stream is not None
    with stream:
        assert list(stream) == events
    assert [s.path for s in fake.seen] == [log.LOG_STREAM_PATH + "?source=server"]


def test_log_stream_that_ends_before_going_live_is_none(fake: FakeDaemon) -> None:
    fake.reply_lines("GET", log.LOG_STREAM_PATH + "?source=model", [], "application/x-ndjson")
    fake.replies[("GET", log.LOG_STREAM_PATH + "?source=model")].body = b""
    assert fake.client().log_stream("model") is None


CHAT_BODY: Any = {
    "model": "qwen",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "ttl": 3600,
}


def _chunk(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


def test_chat_stream_yields_the_chunks_until_done(fake: FakeDaemon) -> None:
    lines = [
        f"data: {json.dumps(_chunk('Hel'))}",
        "",
        ": keep-alive",
        "data: not json",
        f"data:{json.dumps(_chunk('lo'))}",
        "data: [DONE]",
        f"data: {json.dumps(_chunk('after the end'))}",
    ]
    fake.reply_lines("POST", "/api/v0/chat/completions", lines, "text/event-stream")
    chunks = list(fake.client().chat_stream(CHAT_BODY))
    assert chunks == [_chunk("Hel"), _chunk("lo")]
    assert fake.seen == [Seen("POST", "/api/v0/chat/completions", CHAT_BODY)]


def test_chat_stream_error_event_raises(fake: FakeDaemon) -> None:
    error = {"error": {"message": "the model crashed", "type": "server_error"}}
    lines = [f"data: {json.dumps(_chunk('Hi'))}", f"data: {json.dumps(error)}"]
    fake.reply_lines("POST", "/api/v0/chat/completions", lines, "text/event-stream")
    stream = fake.client().chat_stream(CHAT_BODY)
    assert next(stream) == _chunk("Hi")
    with pytest.raises(StreamError) as caught:
        next(stream)
    assert str(caught.value) == "the model crashed"


# -- errors ------------------------------------------------------------------------------


def test_error_envelope_becomes_api_error(fake: FakeDaemon) -> None:
    envelope = {
        "error": {
            "message": "no model matches 'x'",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    fake.reply("POST", lifecycle.LOAD_PATH, envelope, status=404)
    with pytest.raises(ApiError) as caught:
        fake.client().load({"model": "x"})
    assert caught.value.status == 404
    assert str(caught.value) == "no model matches 'x'"
    assert caught.value.body == envelope["error"]


def test_error_without_envelope_says_the_http_status(fake: FakeDaemon) -> None:
    fake.replies[("GET", lifecycle.INSTANCES_PATH)] = Canned(502, b"<html>bad gateway</html>")
    with pytest.raises(ApiError) as caught:
        fake.client().instances()
    assert (caught.value.status, str(caught.value)) == (502, "HTTP 502 Bad Gateway")


def test_streamed_error_status_becomes_api_error(fake: FakeDaemon) -> None:
    with pytest.raises(ApiError) as caught:
        next(fake.client().chat_stream(CHAT_BODY))
    assert (caught.value.status, str(caught.value)) == (404, "unknown route")


def test_missing_socket_is_daemon_not_running(short_dir: Path) -> None:
    client = Client(socket_path=short_dir / "absent.sock")
    with pytest.raises(DaemonNotRunning, match="the daemon is not running"):
        client.instances()


# -- the API version check ---------------------------------------------------------------


def test_other_api_version_is_refused_with_what_to_do(fake: FakeDaemon) -> None:
    fake.version = str(API_VERSION + 1)
    fake.reply("GET", lifecycle.INSTANCES_PATH, [INSTANCE])
    with pytest.raises(ApiVersionMismatch) as caught:
        fake.client().instances()
    assert str(caught.value) == (
        f"the daemon (socket {fake.socket_path}) speaks API version {API_VERSION + 1} but "
        f"this lms speaks {API_VERSION}: restart it with `lms daemon down` then "
        "`lms server start` so both come from the same install"
    )
    assert isinstance(caught.value, ClientError)
    assert (caught.value.theirs, caught.value.ours) == (str(API_VERSION + 1), API_VERSION)


def test_missing_api_version_is_refused_with_what_to_do(fake: FakeDaemon) -> None:
    fake.version = None
    fake.reply("GET", models.ADMIN_MODELS_PATH, {"models": [], "models_dirs": []})
    with pytest.raises(ApiVersionMismatch) as caught:
        fake.client().models()
    message = str(caught.value)
    assert message.startswith(f"the daemon (socket {fake.socket_path}) did not say which API")
    assert "older than this lms, or not lmsd" in message
    assert "`lms daemon down` then `lms server start`" in message
    assert "\n" not in message
    assert caught.value.theirs is None


@pytest.mark.parametrize("header", ["", "one", "1.0"])
def test_unreadable_api_version_is_refused(fake: FakeDaemon, header: str) -> None:
    fake.version = header
    fake.reply("GET", settings.KEYS_PATH, [])
    with pytest.raises(ApiVersionMismatch):
        fake.client().keys()


def test_mismatch_wins_over_an_error_reply(fake: FakeDaemon) -> None:
    # Another version's error bodies may differ too: say why, not what it said.
    fake.version = str(API_VERSION + 1)
    with pytest.raises(ApiVersionMismatch):
        fake.client().unload("gone")


def test_mismatch_refuses_streams_before_reading_them(fake: FakeDaemon) -> None:
    fake.version = str(API_VERSION + 1)
    fake.reply_lines("GET", log.LOG_STREAM_PATH + "?source=model", ["", "{}"], "x/ndjson")
    with pytest.raises(ApiVersionMismatch):
        fake.client().log_stream("model")
    fake.reply_lines("POST", "/api/v0/chat/completions", ["data: {}"], "text/event-stream")
    with pytest.raises(ApiVersionMismatch):
        next(fake.client().chat_stream(CHAT_BODY))


def test_remote_mismatch_does_not_suggest_the_local_daemon_commands(tcp_fake: FakeDaemon) -> None:
    tcp_fake.version = str(API_VERSION + 1)
    with pytest.raises(ApiVersionMismatch) as caught:
        tcp_fake.client().instances()
    message = str(caught.value)
    assert message.startswith(f"the daemon (http://127.0.0.1:{tcp_fake.port}) speaks API version")
    assert "--host/--port" in message
    assert "lms daemon down" not in message


@pytest.mark.parametrize("version", [str(API_VERSION + 1), None], ids=["other", "missing"])
def test_control_plane_works_whatever_the_version(fake: FakeDaemon, version: str | None) -> None:
    """The new lms must be able to see, stop and restart an old daemon."""
    fake.version = version
    stop: admin.ServerStopReply = {"stopped": True, **LISTENER}
    fake.reply("GET", admin.STATUS_PATH, status_reply(api_version=API_VERSION + 1))
    fake.reply("POST", admin.SHUTDOWN_PATH, {"status": "stopping", "pid": 4242})
    fake.reply("POST", admin.SERVER_START_PATH, LISTENER)
    fake.reply("POST", admin.SERVER_STOP_PATH, stop)
    client = fake.client()
    assert client.status()["api_version"] == API_VERSION + 1
    assert client.server_start({}) == LISTENER
    assert client.server_stop() == stop
    assert client.shutdown() == {"status": "stopping", "pid": 4242}
    # They do not vouch for the daemon: the next checked call is still refused.
    fake.reply("GET", lifecycle.INSTANCES_PATH, [])
    with pytest.raises(ApiVersionMismatch):
        client.instances()


def test_version_is_checked_once_per_client(fake: FakeDaemon) -> None:
    fake.reply("GET", lifecycle.INSTANCES_PATH, [INSTANCE])
    client = fake.client()
    assert client.instances() == [INSTANCE]
    fake.version = None  # only a fresh client looks again
    assert client.instances() == [INSTANCE]
    with pytest.raises(ApiVersionMismatch):
        fake.client().instances()


def test_a_refused_client_stays_refused(fake: FakeDaemon) -> None:
    fake.version = str(API_VERSION + 1)
    fake.reply("GET", lifecycle.INSTANCES_PATH, [])
    client = fake.client()
    for _ in range(2):
        with pytest.raises(ApiVersionMismatch):
            client.instances()


# -- the CLI on top: one line, fixed exit code, the control plane still usable ----------


@pytest.fixture
def cli_env(fake: FakeDaemon) -> FakeDaemon:
    return fake


def run_lms(fake: FakeDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `python -m lms` (no --host/--port), pointed at the stand-in's socket."""
    assert fake.socket_path is not None
    folder = fake.socket_path.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env |= {"LMS_HOME": str(folder / "home"), "LMS_RUNTIME_DIR": str(folder)}
    return subprocess.run(
        [sys.executable, "-m", "lms", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_prints_the_mismatch_as_one_error_line(cli_env: FakeDaemon) -> None:
    cli_env.version = str(API_VERSION + 1)
    cli_env.reply("GET", lifecycle.INSTANCES_PATH, [INSTANCE])
    result = run_lms(cli_env, "ps")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: the daemon (socket {cli_env.socket_path}) speaks API version "
        f"{API_VERSION + 1} but this lms speaks {API_VERSION}: restart it with "
        "`lms daemon down` then `lms server start` so both come from the same install\n"
    )


def test_cli_ps_reads_the_typed_reply(cli_env: FakeDaemon) -> None:
    cli_env.reply("GET", lifecycle.INSTANCES_PATH, [INSTANCE])
    result = run_lms(cli_env, "ps")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "IDENTIFIER               MODEL                    STATUS    SIZE         CONTEXT    "
        "PARALLEL    DEVICE    TTL",
        "qwen2.5-0.5b-instruct    qwen2.5-0.5b-instruct    IDLE      397.81 MB    4096       "
        "4           CPU       59m / 1h",
    ]


@pytest.mark.parametrize("version", [str(API_VERSION + 1), None], ids=["other", "missing"])
def test_cli_daemon_status_and_down_work_on_a_mismatched_daemon(
    cli_env: FakeDaemon, version: str | None
) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # a pid that is gone: `lms daemon down` sees the daemon stopped
    cli_env.version = version
    cli_env.reply("GET", admin.STATUS_PATH, status_reply(API_VERSION + 1, pid=exited.pid))
    cli_env.reply("POST", admin.SHUTDOWN_PATH, {"status": "stopping", "pid": exited.pid})
    status = run_lms(cli_env, "daemon", "status")
    assert (status.returncode, status.stdout) == (
        0,
        f"lmsd v0.0.9 is running (PID: {exited.pid})\n",
    )
    down = run_lms(cli_env, "daemon", "down")
    assert (down.returncode, down.stderr) == (0, f"Daemon stopped (PID: {exited.pid}).\n")
    assert ("POST", admin.SHUTDOWN_PATH) in [(s.method, s.path) for s in cli_env.seen]


def test_cli_server_start_on_a_mismatched_daemon_works_and_warns(cli_env: FakeDaemon) -> None:
    cli_env.version = str(API_VERSION + 1)
    cli_env.reply("GET", admin.STATUS_PATH, status_reply(API_VERSION + 1))
    cli_env.reply("POST", admin.SERVER_START_PATH, LISTENER)
    result = run_lms(cli_env, "server", "start")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"Warning: the daemon (socket {cli_env.socket_path}) speaks API version "
        f"{API_VERSION + 1} but this lms speaks {API_VERSION}: restart it with "
        "`lms daemon down` then `lms server start` so both come from the same install",
        "Success! Server is now running on port 1234",
    ]


def test_cli_server_start_on_a_matching_daemon_does_not_warn(cli_env: FakeDaemon) -> None:
    cli_env.reply("GET", admin.STATUS_PATH, status_reply())
    cli_env.reply("POST", admin.SERVER_START_PATH, LISTENER)
    result = run_lms(cli_env, "server", "start")
    assert (result.returncode, result.stderr) == (
        0,
        "Success! Server is now running on port 1234\n",
    )
