"""A property-based fuzz run over every JSON endpoint (Hypothesis), shared by the short run
in tests/unit/test_fuzz.py and the long one in bench/fuzz.py.

The target is the real `Daemon` (every route and middleware, the fake engine) on a thread
of its own, listening on its owner-only Unix socket (where every route is reachable, so
the bodies reach the parsers rather than the access check). The routes come from
`/openapi.json`; for each POST route Hypothesis draws bodies that are shaped like its
schema (fields of the right and the wrong type, lone surrogates, odd numbers), arbitrary
JSON objects and values, raw bytes, deep nesting and wrong content types. What must hold:
no 5xx, the daemon still answers, and every instance is back to nothing in flight.

Left out, because of what they would do on the host rather than what they parse:
shutdown and the listener's start/stop (they stop the target or open TCP ports), config
set (it rewrites the settings mid-run) and import (it moves the file a body names).
"""

import asyncio
import contextlib
import http.client
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from daemon.server import Daemon
from tests.inprocess import in_process_daemon

EXCLUDED = {
    ("POST", "/api/admin/shutdown"),
    ("POST", "/api/admin/server/start"),
    ("POST", "/api/admin/server/stop"),
    ("POST", "/api/admin/config"),
    ("POST", "/api/admin/models/import"),
}
# The fake models that answer in bounded time ("endless" never stops, "crashy" kills its
# engine on purpose: a 502 there is the right answer, not a finding).
MODELS = ["echo", "toolsmith", "fallback-tools", "thinker", "tiny", "embedder"]
TIMEOUT = 60.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class FuzzTarget:
    """An in-process daemon (fake engine) on its own event loop thread."""

    def __init__(self, root: Path) -> None:
        self.daemon: Daemon = in_process_daemon(root, http=False)
        self.socket = self.daemon.paths.socket
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.daemon.start())

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=TIMEOUT)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket, TIMEOUT)
        try:
            headers = {} if content_type is None else {"Content-Type": content_type}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()  # all of it: a stream runs to its end
        finally:
            conn.close()

    def in_flight(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            return {i.identifier: i.in_flight for i in self.daemon.core.manager.instances()}

        return self._call(read())  # type: ignore[no-any-return]

    def settled(self, attempts: int = 500) -> dict[str, int]:
        """In-flight counts once every instance is idle (or the last seen, if never)."""
        counts = self.in_flight()
        for _ in range(attempts):
            if not any(counts.values()):
                break
            self._call(asyncio.sleep(0.01))
            counts = self.in_flight()
        return counts

    def close(self) -> None:
        try:
            self._call(self.daemon.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=TIMEOUT)
            self._loop.close()


@contextlib.contextmanager
def fuzz_target() -> Iterator[FuzzTarget]:
    with tempfile.TemporaryDirectory(prefix="lmsd-fuzz-") as root:
        target = FuzzTarget(Path(root))
        try:
            yield target
        finally:
            target.close()


# -- bodies ---------------------------------------------------------------------------------

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), SURROGATES), max_size=8),  # lone surrogates
    st.sampled_from(["", " ", "\x00", "hi", "<tool_call>", "[TOOL_REQUEST]", "\u202e"]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=64),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1, 0, 2**31, 2**63, 10**30, 1e308, -0.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _typed(kind: str) -> st.SearchStrategy[Any]:
    return {
        "string": TEXT,
        "integer": NUMBERS,
        "number": NUMBERS,
        "boolean": st.booleans(),
        "null": st.none(),
        "array": st.lists(ANY_JSON, max_size=3),
        "object": st.dictionaries(st.text(max_size=12), ANY_JSON, max_size=3),
    }[kind]


def from_schema(schema: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """Values shaped like a (small subset of) JSON schema, now and then of the wrong type."""
    if name == "model":
        shaped: st.SearchStrategy[Any] = st.one_of(st.sampled_from(MODELS), TEXT)
    elif "const" in schema:
        shaped = st.just(schema["const"])
    elif "enum" in schema:
        shaped = st.sampled_from(schema["enum"])
    elif schema.get("type") == "object" and "properties" in schema:
        shaped = _object(schema)
    elif schema.get("type") == "array" and "items" in schema:
        shaped = st.lists(from_schema(schema["items"]), max_size=4)
    elif isinstance(schema.get("type"), str):
        shaped = _typed(schema["type"])
    elif isinstance(schema.get("type"), list):
        items = schema.get("items")
        shaped = st.one_of(
            *(
                st.lists(from_schema(items), max_size=4) if k == "array" and items else _typed(k)
                for k in schema["type"]
            )
        )
    else:
        shaped = ANY_JSON
    return st.one_of(*[shaped] * 9, ANY_JSON)  # mostly the right shape


def _object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))
    fields = {k: from_schema(v, k) for k, v in properties.items()}
    must = st.fixed_dictionaries({k: fields[k] for k in properties if k in required})
    may = st.fixed_dictionaries(
        {}, optional={k: fields[k] for k in properties if k not in required}
    )
    extra = st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=2)
    none: st.SearchStrategy[set[str]] = st.just(set())
    dropped = (
        st.one_of(*[none] * 5, st.sets(st.sampled_from(sorted(required)))) if required else none
    )
    return st.tuples(must, may, extra, dropped).map(
        lambda t: {k: v for k, v in {**t[2], **t[1], **t[0]}.items() if k not in t[3]}
    )


JSON_TYPE = "application/json"
CONTENT_TYPES = st.one_of(
    st.just(JSON_TYPE),
    st.sampled_from(
        [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8"]
    ),
)


def _deep(depth: int) -> bytes:
    return b'{"model": "echo", "x": ' + b"[" * depth + b"]" * depth + b"}"


def request_bodies(schema: dict[str, Any] | None) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """(body, Content-Type) for one endpoint: schema-shaped most of the time."""
    shaped = from_schema(schema) if schema is not None else ANY_JSON
    as_json = st.one_of(shaped, shaped, shaped, ANY_JSON).map(
        lambda v: json.dumps(v, allow_nan=True).encode()
    )
    raw = st.one_of(st.binary(max_size=64), st.integers(1, 100_000).map(_deep))
    return st.one_of(
        st.tuples(as_json, st.just(JSON_TYPE)),
        st.tuples(as_json, st.just(JSON_TYPE)),
        st.tuples(as_json, CONTENT_TYPES),
        st.tuples(raw, st.just(JSON_TYPE)),
    )


# -- the run --------------------------------------------------------------------------------


@dataclass
class Report:
    requests: int = 0
    endpoints: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # "POST /path 500: body -> answer"

    def add(self, route: str, status: int, body: bytes, answer: bytes) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append(
                f"{route} {status}: {body[:300]!r} -> {answer[:300].decode(errors='replace')}"
            )


def json_endpoints(target: FuzzTarget) -> list[tuple[str, dict[str, Any] | None]]:
    """(path, request schema) of every POST route in /openapi.json, less EXCLUDED."""
    status, raw = target.request("GET", "/openapi.json")
    assert status == 200, raw
    out: list[tuple[str, dict[str, Any] | None]] = []
    for path, operations in json.loads(raw)["paths"].items():
        post = operations.get("post")
        if post is None or ("POST", path) in EXCLUDED:
            continue
        content = post.get("requestBody", {}).get("content", {})
        out.append((path, content.get(JSON_TYPE, {}).get("schema")))
    return out


def fuzz(target: FuzzTarget, examples: int, *, seed: int | None = None) -> Report:
    """`examples` requests per JSON endpoint; every 5xx is collected, not raised."""
    report = Report()
    for path, schema in json_endpoints(target):
        report.endpoints.append(f"POST {path}")
        run = _endpoint_run(target, report, path, schema, examples, seed)
        run()
    return report


def _endpoint_run(
    target: FuzzTarget,
    report: Report,
    path: str,
    schema: dict[str, Any] | None,
    examples: int,
    seed: int | None,
) -> Any:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,  # the test command's run is the same every time
        suppress_health_check=list(HealthCheck),
    )
    @given(request_bodies(schema))
    def one(case: tuple[bytes, str | None]) -> None:
        body, content_type = case
        status, answer = target.request("POST", path, body, content_type)
        report.add(f"POST {path}", status, body, answer)

    return one if seed is None else hypothesis_seed(seed)(one)
