"""Another user of the machine against the real daemon with its default config: over TCP
on loopback, with no key, they cannot watch the log stream, list the instances or the
models, load or unload; inference stays open. The owner's `lms` over the Unix socket
still does all of it; `lms --host` (TCP, no way to send a key yet) gets a clear 403."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import DaemonFolders, LmsRunner, link_smollm2, post_json

pytestmark = [pytest.mark.integration, pytest.mark.model]

A = "smollm2-135m-instruct"
NEEDS_ADMIN = "needs the daemon's Unix socket (the `lms` CLI on this machine) or an admin API key"

# Runs as the other user: stdlib only, so any Python on the machine can run it. Prints
# what the Unix socket said, then [status, error message] for each attempt.
OTHER_USER = r"""
import json, socket, sys, urllib.error, urllib.request
socket_path, url, attempts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    with socket.socket(socket.AF_UNIX) as unix:
        unix.connect(socket_path)
    seen = {"unix": "connected", "tcp": []}
except OSError as exc:
    seen = {"unix": type(exc).__name__, "tcp": []}
for method, path, body in attempts:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            seen["tcp"].append([response.status, ""])
    except urllib.error.HTTPError as exc:
        seen["tcp"].append([exc.code, json.loads(exc.read())["error"]["message"]])
print(json.dumps(seen))
"""

ATTEMPTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/admin/log/stream?source=model", None),
    ("GET", "/api/admin/instances", None),
    ("GET", "/api/admin/models", None),
    ("GET", "/api/admin/models/match?q=smollm2", None),
    ("POST", "/api/v1/models/load", {"model": A, "context_length": 512}),
    ("POST", "/api/v1/models/unload", {"instance_id": A}),
    ("POST", "/api/v1/models/unload", {"all": True}),
]
NOBODY = 65534


@pytest.fixture
def url(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> Iterator[str]:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env.update({"LMS_MODELS_DIRS": str(models), "LMS_DEFAULT_CONTEXT_LENGTH": "256"})
    lms("server", "start", "--port", str(free_port), check=True)
    lms("load", A, check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def other_user(folders: DaemonFolders, url: str, *, as_nobody: bool) -> dict[str, Any]:
    args = [str(folders.socket), url, json.dumps(ATTEMPTS)]
    if as_nobody:  # really another uid: the system's Python, not the owner's venv
        run = subprocess.run(
            ["/usr/bin/python3", "-c", OTHER_USER, *args],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=300,
        )
    else:  # the same uid, but TCP and no key: what the daemon sees is the same
        run = subprocess.run(
            [sys.executable, "-c", OTHER_USER, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def assert_refused(seen: dict[str, Any]) -> None:
    for (method, path, _), (status, message) in zip(ATTEMPTS, seen["tcp"], strict=True):
        assert status == 403, (path, status, message)
        assert message == f"{method} {path.split('?')[0]} {NEEDS_ADMIN}", message


def assert_the_owner_still_has_everything(lms: LmsRunner, url: str) -> None:
    """`lms ps`, `lms log stream`, `lms ls` and `lms unload` over the Unix socket."""
    assert [i["identifier"] for i in lms.json("ps")] == [A], "nothing was unloaded"
    follower = subprocess.Popen(
        [sys.executable, "-m", "lms", "log", "stream", "--source", "model", "--json"],
        env=lms.folders.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None and follower.stdout is not None
        assert "Streaming" in follower.stderr.readline()  # subscribed
        # Inference stays open to anyone on loopback; only the owner sees what it was.
        status, _ = post_json(
            f"{url}/v1/chat/completions",
            {"model": A, "messages": [{"role": "user", "content": "owner-7f3"}], "max_tokens": 2},
        )
        assert status == 200
        event = json.loads(follower.stdout.readline())
        assert event["data"]["type"] == "llm.prediction.input"
        assert "owner-7f3" in event["data"]["input"]
    finally:
        follower.kill()
        follower.wait(10)
        for pipe in (follower.stdout, follower.stderr):
            if pipe is not None:
                pipe.close()
    assert A in lms("ls", check=True).stdout
    lms("unload", A, check=True)
    assert lms.json("ps") == []


def test_another_local_user_over_tcp_gets_nothing_of_the_owner_s(
    folders: DaemonFolders, lms: LmsRunner, url: str
) -> None:
    assert_refused(other_user(folders, url, as_nobody=False))
    assert_the_owner_still_has_everything(lms, url)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root (to run a process as nobody) and /usr/bin/python3",
)
def test_really_another_uid_can_open_neither_the_socket_nor_the_admin_routes(
    folders: DaemonFolders, lms: LmsRunner, url: str
) -> None:
    seen = other_user(folders, url, as_nobody=True)
    assert seen["unix"] == "PermissionError", "the socket is 0600 in a 0700 folder"
    assert_refused(seen)
    assert_the_owner_still_has_everything(lms, url)


def test_lms_over_tcp_says_what_it_needs(lms: LmsRunner, url: str) -> None:
    """`lms --host` cannot send a key yet: the admin commands fail with the route and what
    it needs; finding the daemon still works."""
    tcp = ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    for args, route in [
        (["ps"], "GET /api/admin/instances"),
        (["ls"], "GET /api/admin/models"),
        (["unload", A], "POST /api/v1/models/unload"),
        (["log", "stream"], "GET /api/admin/log/stream"),
    ]:
        result = lms(*args, *tcp)
        assert result.returncode == 1, result
        assert f"{route} {NEEDS_ADMIN}" in result.stderr, result.stderr
    assert "Daemon: ON" in lms("status", *tcp, check=True).stdout
    assert [i["identifier"] for i in lms.json("ps")] == [A], "still loaded"
