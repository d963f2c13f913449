"""Remote models through LM Studio's own Python SDK (`lmstudio`, unmodified): two real
daemons of ours in isolated HOMEs, `back` (`--engine fake`, the fixture GGUFs of
tests/inprocess.py) and `front`, which has no models of its own and `back` as its
upstream. The SDK, connected to `front`, lists back's models, gets handles to them and
its predictions and embeddings are answered by `back`; the JS SDK (`@lmstudio/sdk`,
tests/js/sdk_remote.mjs) too when Node.js is here. No real model: fast."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import write_models
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.integration.test_sdk_js import JS, node  # noqa: F401 (node: a fixture)

lms = pytest.importorskip("lmstudio")

pytestmark = [pytest.mark.integration]

UPSTREAM_MODELS = ("echo", "endless", "text-embedding-embedder=far-embed")


def _fixture_models(models: Path, root: Path) -> None:
    write_models(models)


def _no_models(models: Path, root: Path) -> None:
    models.mkdir(parents=True)


@pytest.fixture(scope="module")
def back() -> Iterator[RunningDaemon]:
    with running_daemon("lms-sb-", _fixture_models, {"LMS_ENGINE": "fake"}) as running:
        yield running


@pytest.fixture(scope="module")
def front(back: RunningDaemon) -> Iterator[RunningDaemon]:
    with running_daemon("lms-sf-", _no_models, {"LMS_ENGINE": "fake"}) as running:
        models = [f"--model={m}" for m in UPSTREAM_MODELS]
        running.lms("upstream", "add", "up", back.url, *models, check=True)
        yield running


@pytest.fixture
def client(front: RunningDaemon) -> Iterator[Any]:
    with lms.Client(front.url.removeprefix("http://")) as client:
        yield client


def loaded_here(daemon: RunningDaemon) -> list[str]:
    return [i["identifier"] for i in daemon.lms.json("ps", "--json")]


def test_the_sdk_lists_remote_models(client: Any) -> None:
    downloaded = {m.model_key: m.type for m in client.list_downloaded_models()}
    assert downloaded == {"echo": "llm", "endless": "llm", "far-embed": "embedding"}
    raw = {m["modelKey"]: m for m in client.system.remote_call("listDownloadedModels")}
    assert raw["echo"]["deviceIdentifier"] == "up" and raw["echo"]["remote"] == ["up"]
    assert [m.identifier for m in client.llm.list_loaded()] == ["echo", "endless"]
    assert [m.identifier for m in client.embedding.list_loaded()] == ["far-embed"]


def test_respond_on_a_remote_model_streams_the_upstreams_answer(
    client: Any, front: RunningDaemon, back: RunningDaemon
) -> None:
    model = client.llm.model("echo")
    assert model.identifier == "echo"
    assert model.get_info().model_key == "echo"
    stream = model.respond_stream("hello there friend")
    fragments = [fragment.content for fragment in stream]
    assert fragments == ["hello ", "there ", "friend"]  # back's fake engine echoes, by token
    result = stream.result()
    assert result.content == "hello there friend"
    assert result.stats.predicted_tokens_count == 3
    assert result.model_info.model_key == "echo"
    assert loaded_here(front) == []  # nothing loads on the front
    assert "echo" in loaded_here(back)  # back answered (its JIT load)
    assert model.complete("one two").content == "one two"


def test_cancel_a_remote_stream(client: Any) -> None:
    stream = client.llm.model("endless").respond_stream("on and", config={"maxTokens": 500})
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 2:
            stream.cancel()
    assert stream.result().stats.stop_reason == "userStopped"
    assert seen < 500


def test_embed_on_a_remote_model(client: Any) -> None:
    model = client.embedding.model("far-embed")
    assert len(model.embed("a cat")) == 8
    assert len(model.embed(["a", "b"])) == 2


def test_what_cannot_be_done_here_says_so(client: Any) -> None:
    model = client.llm.model("echo")
    with pytest.raises(lms.LMStudioServerError, match="cannot be unloaded from here"):
        model.unload()
    with pytest.raises(lms.LMStudioServerError, match="tokenizer"):
        model.count_tokens("one two")
    with pytest.raises(lms.LMStudioServerError, match="cannot be loaded here"):
        client.llm.load_new_instance("echo", "mine")


def test_the_js_sdk_too(node: str, front: RunningDaemon) -> None:  # noqa: F811 (the fixture)
    base_url = front.url.replace("http://", "ws://")
    done = subprocess.run(
        [node, "sdk_remote.mjs", base_url, "echo", "far-embed"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr[-3000:]}"
    # The SDK checks every message against its schemas and warns about any that differ.
    assert "communication warning" not in done.stderr.lower(), done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(facts["downloaded"]) == ["echo", "endless", "far-embed"]
    assert facts["loaded"] == ["echo", "endless"] and facts["identifier"] == "echo"
    assert facts["fragments"] == ["hello ", "there ", "friend"]
    assert facts["content"] == "hello there friend" and facts["predictedTokens"] == 3
    assert facts["embeddingLength"] == 8
    assert "cannot be unloaded from here" in facts["unload"]
