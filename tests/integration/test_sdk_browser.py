"""A web page can open a WebSocket to localhost without any CORS check, so the SDK sockets
must refuse pages on other origins at the upgrade (docs/security.md, "LM Studio's SDK
WebSockets"). A real headless Chromium against a real daemon (fake engine): a hostile
page tries every namespace and, were it let in, would unload, load and predict; it gets
nothing done. A page on an allowed origin (`--cors`) connects. Reuses test_browser.py's
helpers; skipped without Chromium, chromedriver and selenium."""

import json
from pathlib import Path

import pytest

from daemon.sdk.protocol import NAMESPACES
from tests.inprocess import write_models
from tests.integration.test_browser import (
    _browser_missing,
    chromium,
    instances,
    page_server,
    reserve_port,
    visit,
)
from tests.support import DaemonFolders, DaemonProcess, LmsRunner

pytestmark = pytest.mark.integration

PAGE = """<!doctype html>
<html><body><script>
const WS = %(ws)s, NAMESPACES = %(namespaces)s;
function attempt(ns) {
  return new Promise((resolve) => {
    let opened = false, done = false, greeted = false;
    const finish = (what) => { if (!done) { done = true; resolve(ns + ":" + what); } };
    let ws;
    try { ws = new WebSocket(WS + "/" + ns); } catch (e) { finish("throw"); return; }
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify({authVersion: 1, clientIdentifier: "page", clientPasskey: "x"}));
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (greeted) return;
      if (message.success !== true) { finish("handshake-refused"); return; }
      greeted = true;
      // What a hostile page would do once in: unload, load, predict.
      ws.send(JSON.stringify({type: "rpcCall", endpoint: "unloadModel", callId: 1,
                              parameter: {identifier: "echo"}}));
      ws.send(JSON.stringify({type: "channelCreate", endpoint: "getOrLoad", channelId: 2,
                              creationParameter: {identifier: "thinker"}}));
      setTimeout(() => { finish("opened"); ws.close(); }, 1000);
    };
    ws.onerror = () => finish(opened ? "error-after-open" : "refused");
    ws.onclose = () => finish(opened ? "closed" : "refused");
  });
}
Promise.all(NAMESPACES.map(attempt)).then((results) => { window.results = results; });
</script></body></html>
"""


def test_pages_on_other_origins_cannot_open_the_sdk_sockets(
    folders: DaemonFolders, lms: LmsRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if (reason := _browser_missing()) is not None:
        pytest.skip(reason)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: use the system driver, never download
    models = folders.root / "models"
    write_models(models)
    folders.extra_env.update({"LMS_MODELS_DIRS": str(models), "LMS_SDK_DISCOVERY": "0"})
    hostile, friendly = tmp_path / "hostile", tmp_path / "friendly"
    hostile.mkdir()
    friendly.mkdir()
    probe, port = reserve_port()
    page = PAGE % {"ws": json.dumps(f"ws://127.0.0.1:{port}"), "namespaces": json.dumps(NAMESPACES)}
    (hostile / "index.html").write_text(page)
    (friendly / "index.html").write_text(page.replace('"thinker"', '"echo"'))
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

            results = visit(driver, f"{hostile_url}/index.html")
            assert sorted(results) == sorted(f"{ns}:refused" for ns in NAMESPACES), results
            assert instances(lms) == before  # nothing unloaded or loaded
            assert daemon.process.poll() is None

            # An allowed origin connects (and, without an admin key, still cannot unload
            # what `lms load` pinned).
            results = visit(driver, f"{friendly_url}/index.html")
            assert sorted(results) == sorted(f"{ns}:opened" for ns in NAMESPACES), results
            assert ("echo", 600_000) in instances(lms)
