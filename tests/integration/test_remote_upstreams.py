"""Remote backends on loopback, with real daemons in isolated HOMEs: `back1` (the real
engine and SmolLM2, API keys required), `back2` (a second daemon of ours, `--engine fake`,
serving the same file), and `front`, whose upstreams they are. Through `front`: their
models listed, every surface served (official openai and anthropic SDKs, Responses, REST
v1), spill-over when the local queue is full, per-upstream metrics; `lms --host` driving
back1 with a key; and last, back1 killed in the middle of a stream (the stream gets a
clear error, the next request goes to back2)."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.conftest import RunningDaemon, _smollm2_and_minilm, running_daemon
from tests.support import SseStream, link_smollm2, read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
FAR = "far-smollm2"
CHAT = [{"role": "user", "content": "Say hi"}]


def _smollm2(models: Path, root: Path) -> None:
    link_smollm2(models)


def admin_key(daemon: RunningDaemon) -> str:
    out = daemon.lms("server", "key", "create", "--scope", "admin", "--json", check=True).stdout
    return str(json.loads(out)["key"])


def request(
    url: str, method: str = "GET", body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture(scope="module")
def back1() -> Iterator[RunningDaemon]:
    env = {"LMS_DEFAULT_CONTEXT_LENGTH": "1024", "LMS_REQUIRE_API_KEY": "true"}
    with running_daemon("lms-b1-", _smollm2_and_minilm, env) as running:
        yield running


@pytest.fixture(scope="module")
def back1_key(back1: RunningDaemon) -> str:
    return admin_key(back1)


@pytest.fixture(scope="module")
def back2() -> Iterator[RunningDaemon]:
    env = {"LMS_ENGINE": "fake", "LMS_FAKE_TOKEN_DELAY": "0.001"}
    with running_daemon("lms-b2-", _smollm2, env) as running:
        yield running


@pytest.fixture(scope="module")
def front(back1: RunningDaemon, back1_key: str, back2: RunningDaemon) -> Iterator[RunningDaemon]:
    env = {
        "LMS_DEFAULT_CONTEXT_LENGTH": "1024",
        "LMS_DEFAULT_PARALLEL": "1",
        "LMS_MAX_QUEUE": "0",
        "LMS_METRICS": "1",
    }
    with running_daemon("lms-fr-", _smollm2, env) as running:
        lms = running.lms
        embed = [m["modelKey"] for m in back1.lms.json("ls", "--embedding")]
        far = [f"--model={MODEL}={FAR}"] + [f"--model={k}=far-embed" for k in embed[:1]]
        os.environ["B1_KEY_FOR_TEST"] = back1_key
        try:
            lms(
                "upstream",
                "add",
                "b1",
                back1.url,
                "--api-key-env",
                "B1_KEY_FOR_TEST",
                *far,
                "--priority",
                "0",
                check=True,
            )
            lms(
                "upstream",
                "add",
                "b1-same",
                back1.url,
                "--api-key-env",
                "B1_KEY_FOR_TEST",
                f"--model={MODEL}",
                check=True,
            )
        finally:
            del os.environ["B1_KEY_FOR_TEST"]
        lms(
            "upstream",
            "add",
            "b2",
            back2.url,
            f"--model={MODEL}={FAR}",
            "--priority",
            "1",
            check=True,
        )
        lms("upstream", "policy", MODEL, "spill_over", check=True)
        yield running


def test_upstreams_listed_without_their_keys(front: RunningDaemon, back1_key: str) -> None:
    listing = front.lms("upstream", "list", "--json", check=True).stdout
    assert back1_key not in listing
    data = json.loads(listing)
    by_name = {u["name"]: u for u in data["upstreams"]}
    assert by_name["b1"]["api_key_set"] and not by_name["b2"]["api_key_set"]
    assert by_name["b1"]["reachable"] and by_name["b2"]["reachable"]
    assert FAR in by_name["b1"]["served_models"] and FAR in by_name["b2"]["served_models"]
    assert data["policies"] == {MODEL: "spill_over"}


def test_remote_models_in_every_listing(front: RunningDaemon) -> None:
    ls = {m["modelKey"]: m for m in front.lms.json("ls")}
    assert ls[FAR]["format"] == "remote" and ls[FAR]["remote"] == ["b1", "b2"]
    assert ls[MODEL]["format"] == "gguf" and ls[MODEL]["remote"] == ["b1-same"]
    table = front.lms("ls", check=True).stdout
    assert "Remote (b1, b2)" in table and "Local + remote (b1-same)" in table
    _, v1 = request(f"{front.url}/v1/models")
    assert [m["id"] for m in v1["data"]].count(MODEL) == 1 and FAR in [m["id"] for m in v1["data"]]
    _, v0 = request(f"{front.url}/api/v0/models")
    far = next(m for m in v0["data"] if m["id"] == FAR)
    assert far["compatibility_type"] == "remote" and far["deviceIdentifier"] == "b1"
    _, rest = request(f"{front.url}/api/v1/models")
    assert next(m for m in rest["models"] if m["key"] == FAR)["remote"] == ["b1", "b2"]


def test_openai_sdk_through_the_front(front: RunningDaemon) -> None:
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model=FAR, messages=CHAT, max_tokens=8)  # type: ignore[arg-type]
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=FAR,
            messages=CHAT,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1  # token by token
    done = client.completions.create(model=FAR, prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text
    if any(m.id == "far-embed" for m in client.models.list()):
        vectors = client.embeddings.create(model="far-embed", input=["a cat", "a dog"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 10


def test_anthropic_responses_and_rest_v1_through_the_front(front: RunningDaemon) -> None:
    client = anthropic.Anthropic(base_url=front.url, api_key="x", max_retries=0)
    message = client.messages.create(model=FAR, max_tokens=8, messages=CHAT)  # type: ignore[arg-type]
    assert message.content and message.content[0].type == "text"
    with client.messages.stream(model=FAR, max_tokens=8, messages=CHAT) as stream:  # type: ignore[arg-type]
        assert "".join(stream.text_stream)
    status, body = request(
        f"{front.url}/v1/responses", "POST", {"model": FAR, "input": "Hi", "max_output_tokens": 8}
    )
    assert status == 200 and body["output"][0]["content"][0]["text"], body
    status, body = request(
        f"{front.url}/api/v1/chat", "POST", {"model": FAR, "input": "Hi", "max_output_tokens": 8}
    )
    assert status == 200 and body["output"][-1]["content"], body


def test_spill_over_to_the_upstream_when_the_local_queue_is_full(front: RunningDaemon) -> None:
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 400, "temperature": 1.5}
    with SseStream(front.url, "/v1/chat/completions", body, timeout=120) as local:
        events = local.events()
        assert next(events)  # the local instance (parallel 1, no queue) is busy now
        status, reply = request(
            f"{front.url}/v1/chat/completions", "POST", {**body, "max_tokens": 4}
        )
        assert status == 200, reply
    metrics = read_metrics(front.url, front.lms)
    assert 'lmsd_upstream_requests_total{upstream="b1-same"} 1.0' in metrics
    assert 'lmsd_upstream_in_flight{upstream="b1"}' in metrics


def test_lms_host_drives_the_other_daemon_with_a_key(
    back1: RunningDaemon, back1_key: str, front: RunningDaemon
) -> None:
    host = back1.url.removeprefix("http://")
    lms = front.lms  # another machine's lms, as far as back1 is concerned
    denied = lms("--host", host, "ps")
    assert denied.returncode == 1 and ("401" in denied.stderr or "key" in denied.stderr)
    with_key = ("--host", host, "--api-key", back1_key)
    assert MODEL in [m["modelKey"] for m in lms.json(*with_key, "ls")]
    lms(*with_key, "load", MODEL, "--identifier", "remote-one", "-y", check=True)
    assert "remote-one" in [i["identifier"] for i in lms.json(*with_key, "ps")]
    answer = lms(*with_key, "chat", "remote-one", "-p", "Say hi", check=True)
    assert answer.stdout.strip()
    lms(*with_key, "unload", "remote-one", check=True)
    status = lms(*with_key, "server", "status", "--json", check=True)
    assert json.loads(status.stdout)
    env_run = subprocess.run(
        [sys.executable, "-m", "lms", "ps", "--json"],
        env={**front.folders.env, "LMS_HOST": host, "LMS_API_KEY": back1_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_run.returncode == 0, env_run.stderr
    local_only = lms(*with_key, "server", "config", "list")
    assert (
        local_only.returncode == 2 and "only with the daemon on this machine" in local_only.stderr
    )


def test_failover_when_an_upstream_dies_mid_stream(
    front: RunningDaemon, back1: RunningDaemon, back2: RunningDaemon
) -> None:
    body = {"model": FAR, "messages": CHAT, "max_tokens": 400, "temperature": 1.5}
    with SseStream(front.url, "/v1/chat/completions", body, timeout=120) as stream:
        events = stream.events()
        assert next(events)  # served by b1 (priority 0)
        pid = back1.folders.daemon_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        rest = list(events)
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert errors and "'b1'" in errors[0]["error"]["message"], rest[-3:]
    status, reply = request(f"{front.url}/v1/chat/completions", "POST", {**body, "max_tokens": 4})
    assert status == 200, reply  # b1 refuses connections now: b2 serves it
    listing = json.loads(front.lms("upstream", "list", "--json", check=True).stdout)
    b1 = next(u for u in listing["upstreams"] if u["name"] == "b1")
    assert b1["last_error"] and "b1" in b1["last_error"]
