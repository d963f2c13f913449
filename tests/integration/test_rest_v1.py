"""LM Studio's native REST API v1 (`/api/v1/models`, `/api/v1/chat`) as curl would call it,
and the model listings' loaded state, against the real daemon and SmolLM2."""

import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from tests.integration.conftest import RunningDaemon

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"


def call(daemon: RunningDaemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        daemon.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def events(daemon: RunningDaemon, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    request = urllib.request.Request(
        daemon.url + "/api/v1/chat",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((name, json.loads(line.removeprefix("data: "))))
    return out


def test_models_listing(daemon: RunningDaemon) -> None:
    status, body = call(daemon, "GET", "/api/v1/models")
    assert status == 200
    model = next(m for m in body["models"] if m["key"] == MODEL)
    assert model["type"] == "llm" and model["format"] == "gguf"
    assert model["architecture"] == "llama"
    assert model["size_bytes"] > 0 and model["max_context_length"] >= 2048
    assert set(model["capabilities"]) == {"vision", "trained_for_tool_use"}


def test_chat_and_previous_response_id(daemon: RunningDaemon) -> None:
    body = {"model": MODEL, "input": "My name is Ada.", "max_output_tokens": 12}
    status, first = call(daemon, "POST", "/api/v1/chat", body)
    assert status == 200, first
    assert first["model_instance_id"] == MODEL
    assert [item["type"] for item in first["output"]] == ["message"]
    assert first["output"][0]["content"]
    stats = first["stats"]
    assert 0 < stats["total_output_tokens"] <= 12 and stats["input_tokens"] > 0
    assert first["response_id"].startswith("resp_")

    follow = {
        "model": MODEL,
        "input": "What is my name?",
        "max_output_tokens": 8,
        "previous_response_id": first["response_id"],
    }
    status, second = call(daemon, "POST", "/api/v1/chat", follow)
    assert status == 200, second
    # The stored conversation went in: the prompt holds both turns.
    assert second["stats"]["input_tokens"] > stats["input_tokens"] + stats["total_output_tokens"]
    assert second["response_id"] != first["response_id"]

    # Now loaded: /api/v0/models says so, with the loaded context.
    status, v0 = call(daemon, "GET", f"/api/v0/models/{MODEL}")
    assert status == 200
    assert v0["state"] == "loaded" and v0["loaded_context_length"] == 1024
    status, listing = call(daemon, "GET", "/api/v1/models")
    model = next(m for m in listing["models"] if m["key"] == MODEL)
    assert model["loaded_instances"][0]["id"] == MODEL
    assert model["loaded_instances"][0]["config"]["context_length"] == 1024


def test_streamed_chat(daemon: RunningDaemon) -> None:
    got = events(
        daemon, {"model": MODEL, "input": "Say hi", "max_output_tokens": 8, "stream": True}
    )
    names = [name for name, _ in got]
    assert names[0] == "chat.start" and names[-1] == "chat.end"
    assert all(data["type"] == name for name, data in got)
    assert names.index("prompt_processing.end") < names.index("message.start")
    assert names.index("message.start") < names.index("message.end") < names.index("chat.end")
    text = "".join(d["content"] for n, d in got if n == "message.delta")
    result = got[-1][1]["result"]
    assert result["output"][-1] == {"type": "message", "content": text}
    assert 0 < result["stats"]["total_output_tokens"] <= 8


def test_streamed_chat_tells_its_jit_load_as_it_goes(daemon: RunningDaemon) -> None:
    daemon.lms("unload", "--all", check=True)
    got = events(daemon, {"model": MODEL, "input": "Hi", "max_output_tokens": 4, "stream": True})
    names = [name for name, _ in got]
    assert names[:2] == ["chat.start", "model_load.start"]
    end_of_load = names.index("model_load.end")
    assert set(names[2:end_of_load]) == {"model_load.progress"}
    progress = [d["progress"] for n, d in got if n == "model_load.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert names[end_of_load + 1] == "prompt_processing.start" and names[-1] == "chat.end"
    assert got[-1][1]["result"]["stats"]["model_load_time_seconds"] > 0


def test_errors_in_v1_shape(daemon: RunningDaemon) -> None:
    status, body = call(daemon, "POST", "/api/v1/chat", {"model": "no-such-model", "input": "x"})
    assert status == 404 and body["error"]["type"] == "model_not_found"
    status, body = call(daemon, "POST", "/api/v1/chat", {"model": MODEL})
    assert status == 400
    assert body["error"]["type"] == "invalid_request" and body["error"]["param"] == "input"


def test_openai_models_retrieve(daemon: RunningDaemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="not-needed", max_retries=0)
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
