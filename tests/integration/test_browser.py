"""A real headless Chromium against a real daemon (fake engine): a page on another origin
tries every state-changing and inference route the way a hostile web page can (`fetch`
with `mode: "no-cors"` and `text/plain` bodies, form posts, JSON with a preflight) and
gets nothing done; a page on an allowed origin (`--cors`) works.

The pages come from local `http.server`s on other loopback ports: their origins differ
from the daemon's by port, and the daemon's DNS-rebinding check lets loopback hosts in,
so only the cross-origin checks stand between the page and the API.

Needs Chromium and its driver from the OS packages (`apt-get install chromium
chromium-driver`, which scripts/setup.sh does where it can) and `selenium` (the dev
extra); skipped without them."""

import contextlib
import functools
import http.client
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import write_models
from tests.support import DaemonFolders, DaemonProcess, LmsRunner

pytestmark = pytest.mark.integration

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
CHROMEDRIVER = shutil.which("chromedriver")


def _browser_missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return (
            "no Chromium/chromedriver installed (apt-get install chromium chromium-driver, "
            "or scripts/setup.sh as root)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


# Every state-changing and inference route, with a body that would do something if it
# were accepted: JIT-load "thinker", set a TTL, unload "echo" or everything, shut down.
CHAT = {"model": "thinker", "messages": [{"role": "user", "content": "hi"}], "ttl": 5}
ATTACKS: list[tuple[str, dict[str, Any]]] = [
    ("/api/v1/models/load", {"model": "thinker", "ttl": 5}),
    ("/api/v1/models/load", {"model": "echo", "ttl": 5}),  # would change echo's TTL
    ("/api/v1/models/unload", {"instance_id": "echo"}),
    ("/api/v1/models/unload", {"all": True}),
    ("/api/admin/shutdown", {"reason": "a web page"}),
    ("/api/admin/config", {"key": "jit_ttl", "value": 7}),
    ("/v1/chat/completions", CHAT),
    ("/api/v0/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "model": "echo"}),
    ("/v1/completions", {"model": "echo", "prompt": "hi", "ttl": 5}),
    ("/api/v0/completions", {"model": "echo", "prompt": "hi", "ttl": 5}),
    ("/v1/embeddings", {"model": "embedder", "input": "hi"}),
    ("/api/v0/embeddings", {"model": "embedder", "input": "hi"}),
    ("/v1/responses", {"model": "echo", "input": "hi"}),
    ("/v1/messages", {"model": "echo", "max_tokens": 8, "messages": CHAT["messages"]}),
    ("/api/v1/chat", {"model": "echo", "input": "hi"}),
]

HOSTILE_PAGE = """<!doctype html>
<html><body><script>
const API = %(api)s, ATTACKS = %(attacks)s;
function formPost(path, body, enctype, i) {
  // The classic form trick: one field whose name and value spell a JSON body.
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "f" + i + "-" + enctype.length;
    document.body.appendChild(frame);  // loads about:blank at once: listen after that
    frame.onload = () => resolve("form:" + enctype + ":sent");
    const form = document.createElement("form");
    form.method = "POST"; form.action = API + path; form.enctype = enctype;
    form.target = frame.name;
    const text = JSON.stringify(body);
    const input = document.createElement("input");
    input.name = text.slice(0, -1) + ',"pad":"'; input.value = '"}';
    form.appendChild(input); document.body.appendChild(form); form.submit();
  });
}
async function attempt(label, promise) {
  try { return label + ":" + (await promise); } catch (e) { return label + ":blocked"; }
}
async function attack() {
  const results = [];
  for (const [i, [path, body]] of ATTACKS.entries()) {
    const text = JSON.stringify(body);
    const opts = {method: "POST", body: text, headers: {"Content-Type": "text/plain"}};
    results.push(await attempt("no-cors",
      fetch(API + path, {...opts, mode: "no-cors"}).then((r) => r.type)));
    results.push(await attempt("cors-text",
      fetch(API + path, opts).then((r) => r.status)));
    results.push(await attempt("cors-json", fetch(API + path, {method: "POST", body: text,
      headers: {"Content-Type": "application/json"}}).then((r) => r.status)));
    results.push(await formPost(path, body, "text/plain", i));
    results.push(await formPost(path, body, "application/x-www-form-urlencoded", i));
  }
  window.results = results;
}
attack();
</script></body></html>
"""

FRIENDLY_PAGE = """<!doctype html>
<html><body><script>
fetch(%(api)s + "/v1/chat/completions", {
  method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({model: "echo", messages: [{role: "user", content: "ping pong"}]}),
}).then((r) => r.json()).then((body) => { window.results = body; },
  (e) => { window.results = "failed: " + e; });
</script></body></html>
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server(folder: Path) -> Iterator[str]:
    """A static web server for `folder` on its own loopback port: another origin."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def reserve_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.socket_path))


def metric_samples(folders: DaemonFolders) -> dict[tuple[str, str], float]:
    """`GET /metrics` over the Unix socket: {(metric with labels, ...): value}."""
    conn = _UnixConnection(folders.socket)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metric, _, labels = name.partition("{")
            samples[(metric, labels.rstrip("}"))] = float(value)
    return samples


def instances(lms: LmsRunner) -> list[tuple[str, Any]]:
    return sorted((i["identifier"], i.get("ttlMs")) for i in lms.json("ps"))


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def visit(driver: Any, url: str, timeout: float = 60.0) -> Any:
    """Open a page and wait until its script has put what it did in `window.results`."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("return window.results")
    )


def test_a_page_on_another_origin_gets_nothing_done_and_an_allowed_one_works(
    folders: DaemonFolders, lms: LmsRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if (reason := _browser_missing()) is not None:
        pytest.skip(reason)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: use the system driver, never download
    models = folders.root / "models"
    write_models(models)
    folders.extra_env.update({"LMS_MODELS_DIRS": str(models), "LMS_METRICS": "1"})
    hostile, friendly = tmp_path / "hostile", tmp_path / "friendly"
    hostile.mkdir()
    friendly.mkdir()
    probe, port = reserve_port()
    api = json.dumps(f"http://127.0.0.1:{port}")
    (hostile / "index.html").write_text(HOSTILE_PAGE % {"api": api, "attacks": json.dumps(ATTACKS)})
    (friendly / "index.html").write_text(FRIENDLY_PAGE % {"api": api})
    with page_server(hostile) as hostile_url, page_server(friendly) as friendly_url:
        probe.close()
        with (
            DaemonProcess(
                folders, "--engine", "fake", "--port", str(port), "--cors", friendly_url
            ) as daemon,
            chromium() as driver,
        ):
            daemon.wait_ready()
            lms("load", "echo", "--ttl", "600", "-y", check=True)
            before = instances(lms)
            config_before = lms.json("server", "config", "list")
            metrics_before = metric_samples(folders)

            results = visit(driver, f"{hostile_url}/index.html")
            print("hostile page:", json.dumps(results))
            # The page ran every attempt; none could read an answer.
            assert len(results) == 5 * len(ATTACKS)
            assert not [r for r in results if r.startswith("cors-") and not r.endswith(":blocked")]
            # The page waited for every answer: the daemon has counted them all.
            metrics_after = metric_samples(folders)
            assert daemon.process.poll() is None, "the page shut the daemon down"
            assert instances(lms) == before  # nothing loaded or unloaded, no TTL changed
            assert lms.json("server", "config", "list") == config_before
            delta = {
                key: value - metrics_before.get(key, 0.0)
                for key, value in metrics_after.items()
                if key[0].endswith("_total") and value != metrics_before.get(key, 0.0)
            }
            print(
                "daemon metrics changed by the hostile page:",
                json.dumps({f"{m}{{{labels}}}": v for (m, labels), v in sorted(delta.items())}),
            )
            generated = [k for k in delta if k[0].startswith(("lmsd_generated", "lmsd_prompt"))]
            assert generated == [], "the page ran a generation"
            answered = {
                labels: v
                for (metric, labels), v in delta.items()
                if metric == "lmsd_http_requests_total" and 'endpoint="/metrics"' not in labels
            }
            # The requests did reach the daemon (the test is not vacuous), and every one was
            # refused: 403 from the cross-origin check, or 415 for a non-JSON body.
            for path, _ in ATTACKS:
                assert any(f'endpoint="{path}"' in labels for labels in answered), path
            assert all(
                'status="403"' in labels or 'status="415"' in labels for labels in answered
            ), answered

            reply = visit(driver, f"{friendly_url}/index.html")
            print("allowed page:", json.dumps(reply))
            assert isinstance(reply, dict), reply
            assert reply["choices"][0]["message"]["content"] == "ping pong"
            assert daemon.stop() == 0
