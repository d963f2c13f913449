"""Safe defaults through the real daemon and CLI: API keys, binding beyond loopback,
DNS-rebinding protection, CORS allow-lists, metrics, settings from the CLI."""

import json
import urllib.request
from typing import Any

import pytest

from tests.support import DaemonFolders, LmsRunner, http_get, link_smollm2, wait_until

pytestmark = pytest.mark.integration


def request(
    url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None, dict(exc.headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_binding_beyond_loopback_needs_a_key(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    refused = lms("server", "start", "--bind", "0.0.0.0", "--port", str(free_port))
    assert refused.returncode == 1
    assert "refusing to listen on 0.0.0.0" in refused.stderr
    assert "lms server key create" in refused.stderr
    lms("daemon", "down")

    lms("server", "start", "--port", str(free_port), check=True)
    admin = lms(
        "server", "key", "create", "--name", "ops", "--scope", "admin", check=True
    ).stdout.strip()
    inference = lms("server", "key", "create", "--name", "app", check=True).stdout.strip()
    assert admin.startswith("lms-") and inference.startswith("lms-") and admin != inference
    listing = lms.json("server", "key", "list")
    assert {k["name"]: k["scope"] for k in listing} == {"ops": "admin", "app": "inference"}
    assert all(admin not in json.dumps(k) for k in listing), "keys are never shown again"
    stored = (folders.root / "state" / "api-keys.json").read_text()
    assert admin not in stored and inference not in stored, "only hashes are stored"

    lms("server", "start", "--bind", "0.0.0.0", "--port", str(free_port), check=True)
    url = f"http://127.0.0.1:{free_port}"
    status, body, headers = request(f"{url}/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert request(f"{url}/v1/models", headers=bearer("lms-wrong"))[0] == 401
    assert request(f"{url}/v1/models", headers=bearer(inference))[0] == 200
    assert request(f"{url}/v1/models", headers={"x-api-key": inference})[0] == 200
    assert request(f"{url}/lmstudio-greeting")[0] == 200, "discovery stays open"

    status, body, _ = request(
        f"{url}/api/v1/models/unload",
        method="POST",
        body={"instance_id": "x"},
        headers=bearer(inference),
    )
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, body, _ = request(
        f"{url}/api/v1/models/unload",
        method="POST",
        body={"instance_id": "x"},
        headers=bearer(admin),
    )
    assert status == 404, "an admin key gets through (there is no such instance)"

    lms("server", "key", "revoke", "app", check=True)
    assert request(f"{url}/v1/models", headers=bearer(inference))[0] == 401
    lms("daemon", "down", check=True)


def test_insecure_binds_without_keys(lms: LmsRunner, free_port: int) -> None:
    lms("server", "start", "--bind", "0.0.0.0", "--port", str(free_port), "--insecure", check=True)
    assert http_get(f"http://127.0.0.1:{free_port}/v1/models")[0] == 200
    lms("daemon", "down", check=True)


def test_foreign_host_header_is_refused_on_loopback(lms: LmsRunner, free_port: int) -> None:
    lms("server", "start", "--port", str(free_port), check=True)
    url = f"http://127.0.0.1:{free_port}/v1/models"
    status, body, _ = request(url, headers={"Host": f"evil.example:{free_port}"})
    assert status == 403 and "DNS-rebinding" in body["error"]["message"]
    for host in (f"localhost:{free_port}", f"127.0.0.1:{free_port}", "localhost"):
        assert request(url, headers={"Host": host})[0] == 200
    lms("daemon", "down", check=True)


def test_cors_allow_list_from_the_cli(lms: LmsRunner, free_port: int) -> None:
    lms("server", "start", "--port", str(free_port), "--cors", "http://good.example", check=True)
    url = f"http://127.0.0.1:{free_port}/v1/chat/completions"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    status, _, headers = request(
        url, method="OPTIONS", headers={"Origin": "http://good.example", **preflight}
    )
    assert status == 204
    assert "POST" in headers["Access-Control-Allow-Methods"]
    status, _, headers = request(
        url, method="OPTIONS", headers={"Origin": "http://evil.example", **preflight}
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, _, headers = request(
        f"http://127.0.0.1:{free_port}/v1/models", headers={"Origin": "http://good.example"}
    )
    assert headers["Access-Control-Allow-Origin"] == "http://good.example"
    lms("daemon", "down", check=True)


def test_metrics_count_requests(lms: LmsRunner, free_port: int) -> None:
    lms("server", "start", "--port", str(free_port), check=True)
    url = f"http://127.0.0.1:{free_port}"
    assert request(f"{url}/metrics")[0] == 401, "a key, always"
    key = bearer(lms("server", "key", "create", check=True).stdout.strip())
    assert request(f"{url}/metrics", headers=key)[0] == 404, "off by default"
    lms("server", "config", "set", "metrics", "true", check=True)
    for _ in range(3):
        assert request(f"{url}/v1/models")[0] == 200
    metrics = urllib.request.Request(f"{url}/metrics", headers=key)
    with urllib.request.urlopen(metrics, timeout=10) as response:
        text = response.read().decode()
    assert 'lmsd_http_requests_total{endpoint="/v1/models",status="200"} 3.0' in text
    assert "lmsd_loaded_instances 0.0" in text
    assert "lmsd_worker_crashes_total 0.0" in text
    assert "lmsd_queued_requests 0.0" in text
    lms("daemon", "down", check=True)


def test_config_set_is_live_and_survives_a_restart(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    lms("server", "start", "--port", str(free_port), check=True)
    url = f"http://127.0.0.1:{free_port}"
    assert len(http_get(f"{url}/v1/models")[1]["data"]) == 1
    result = lms("server", "config", "set", "jit_loading", "false", check=True)
    assert "applied live" in result.stderr
    assert http_get(f"{url}/v1/models")[1]["data"] == [], "applied at once"
    lms("server", "config", "set", "jit_ttl", "120", check=True)
    bad = lms("server", "config", "set", "guardrail", "loose")
    assert bad.returncode == 2 and "guardrail" in bad.stderr
    typo = lms("server", "config", "set", "jit_ttll", "1")
    assert typo.returncode == 2 and "unknown setting" in typo.stderr

    lms("daemon", "down", check=True)
    lms("server", "start", "--port", str(free_port), check=True)
    assert lms("server", "config", "get", "jit_loading", check=True).stdout.strip() == "false"
    assert lms.json("server", "config", "get", "jit_ttl") == 120.0
    settings = lms.json("server", "config", "list")
    assert settings["jit_loading"] is False and settings["guardrail"] == "balanced"
    assert "jit_ttl: 120.0" in folders.config_file.read_text()
    lms("daemon", "down", check=True)


@pytest.mark.model
def test_preload_at_start(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> None:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    folders.write_config(
        "preload:\n  - model: smollm2-135m-instruct\n    identifier: boot\n"
        "    context_length: 512\n"
    )
    lms("server", "start", "--port", str(free_port), check=True)
    try:
        assert wait_until(
            lambda: any(
                i["identifier"] == "boot" and i["state"] == "loaded" for i in lms.json("ps")
            ),
            timeout=30,
        )
        instance = lms.json("ps")[0]
        assert instance["contextLength"] == 512 and instance["origin"] == "manual"
    finally:
        lms("daemon", "down")
