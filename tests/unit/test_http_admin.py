"""The HTTP app in-process, with a fake DaemonControl: routes, errors, channel rules."""

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.auth import KeyStore
from daemon.config import Settings
from daemon.core import Core
from daemon.http.app import create_app
from lms.api.admin import DaemonStatus


class FakeControl:
    def __init__(self, tmp_path: Path) -> None:
        self.cors: tuple[str, ...] = ()
        self.settings = Settings(max_body_bytes=2048)
        self.keys = KeyStore(tmp_path / "keys.json")
        self.config_file = tmp_path / "config.yaml"
        self.http_running = True
        self.shutdown_requested = False
        self.started: list[dict[str, Any]] = []

    def status(self) -> DaemonStatus:
        return {
            "status": "running",
            "version": "0",
            "api_version": 1,
            "pid": 42,
            "uptime_seconds": 1.0,
            "socket": "/x.sock",
            "http": {
                "running": self.http_running,
                "bind": "127.0.0.1",
                "port": 1234,
                "cors": list(self.cors),
            },
        }

    def auth_required(self) -> bool:
        return False

    async def apply_setting(self, key: str, new: Settings) -> bool:
        self.settings = new
        return True

    async def start_http(
        self, *, port: int | None, bind: str | None, cors: list[str] | None
    ) -> None:
        self.started.append({"port": port, "bind": bind, "cors": cors})

    async def stop_http(self) -> bool:
        return True

    def request_shutdown(self) -> None:
        self.shutdown_requested = True


@pytest.fixture
def control(tmp_path: Path) -> FakeControl:
    return FakeControl(tmp_path)


@pytest.fixture
async def client(aiohttp_client: Any, control: FakeControl, tmp_path: Path) -> TestClient[Any, Any]:
    core = Core(control.settings, data_dir=tmp_path, state_dir=tmp_path)
    app: web.Application = create_app(control, core)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def assert_error_envelope(body: Any, code: str | None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["code"] == code


async def test_greeting_health_status(client: TestClient[Any, Any]) -> None:
    response = await client.get("/lmstudio-greeting")
    assert (response.status, await response.json()) == (200, {"lmstudio": True})
    response = await client.get("/health")
    assert (response.status, await response.json()) == (200, {"status": "ok"})
    response = await client.get("/api/admin/status")
    assert (await response.json())["pid"] == 42


async def test_unknown_route_is_404_in_openai_shape(client: TestClient[Any, Any]) -> None:
    response = await client.post("/chat/completions", json={})
    assert response.status == 404
    body = await response.json()
    assert_error_envelope(body, "unknown_route")
    assert "POST /chat/completions" in body["error"]["message"]


async def test_wrong_method_is_405(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/health")
    assert response.status == 405
    assert_error_envelope(await response.json(), "method_not_allowed")


async def test_state_changing_admin_calls_are_refused_over_tcp(
    client: TestClient[Any, Any], control: FakeControl
) -> None:
    for path in ("/api/admin/shutdown", "/api/admin/server/start", "/api/admin/server/stop"):
        response = await client.post(path, json={})
        assert response.status == 403, path
        assert_error_envelope(await response.json(), "forbidden")
    assert not control.shutdown_requested
    assert control.started == []


async def test_cors_off_by_default(client: TestClient[Any, Any]) -> None:
    response = await client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_on_answers_preflight_and_tags_responses(
    client: TestClient[Any, Any], control: FakeControl
) -> None:
    control.cors = ("*",)
    response = await client.options(
        "/v1/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    response = await client.get("/nope", headers={"Origin": "http://app.example"})
    assert response.status == 404
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_allow_list(client: TestClient[Any, Any], control: FakeControl) -> None:
    control.cors = ("http://good.example",)
    preflight = {"Access-Control-Request-Method": "POST"}
    response = await client.options(
        "/v1/chat/completions", headers={"Origin": "http://good.example", **preflight}
    )
    assert response.status == 204
    response = await client.get("/health", headers={"Origin": "http://good.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert response.headers["Vary"] == "Origin"
    response = await client.options(
        "/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight}
    )
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
