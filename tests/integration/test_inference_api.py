"""/v1 and /api/v0 inference over raw HTTP: LM Studio's extra fields, parameters, every
error case (status and OpenAI error shape), disconnects."""

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon
from tests.support import SseStream, http_get, post_json, read_metrics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
EOS_BIASED_AWAY = {"2": -100}


def chat_body(content: str = "Say hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def assert_error(
    status: int,
    body: Any,
    expected_status: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    assert status == expected_status, body
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


def assert_v0_extras(body: dict[str, Any], stop_reason: str, elapsed: float) -> None:
    """`elapsed`: the seconds the test waited for the reply, which every timing in the stats
    falls within (they are seconds, not milliseconds)."""
    stats = body["stats"]
    assert stats["tokens_per_second"] > 0
    assert stats["time_to_first_token"] >= 0 and stats["generation_time"] > 0
    rounding = 0.001  # each is rounded to the millisecond
    assert stats["time_to_first_token"] + stats["generation_time"] <= elapsed + 2 * rounding
    assert stats["stop_reason"] == stop_reason
    assert body["model_info"] == {
        "arch": "llama",
        "quant": "Q4_1",
        "format": "gguf",
        "context_length": 1024,
    }
    runtime = body["runtime"]
    assert runtime["name"].startswith("llama.cpp-") and runtime["name"].endswith("-cpu")
    import llama_cpp

    assert runtime["version"] == llama_cpp.__version__
    assert runtime["supported_formats"] == ["gguf"]


def test_v0_chat_completion_has_the_seed_fields(daemon: RunningDaemon) -> None:
    sent = time.monotonic()
    status, body = post_json(
        f"{daemon.url}/api/v0/chat/completions",
        chat_body(max_tokens=16, logit_bias=EOS_BIASED_AWAY),
    )
    elapsed = time.monotonic() - sent
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert body["usage"]["completion_tokens"] == 16
    assert body["usage"]["total_tokens"] == 16 + body["usage"]["prompt_tokens"]
    assert_v0_extras(body, "maxPredictedTokensReached", elapsed)


def test_v0_completion_with_stop_string(daemon: RunningDaemon) -> None:
    body = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5,",
        "max_tokens": 20,
        "temperature": 0,
        "stop": [" 8"],
    }
    sent = time.monotonic()
    status, reply = post_json(f"{daemon.url}/api/v0/completions", body)
    elapsed = time.monotonic() - sent
    assert status == 200, reply
    assert reply["object"] == "text_completion"
    text = reply["choices"][0]["text"]
    assert text.startswith(" 6, 7,") and " 8" not in text
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert_v0_extras(reply, "stopStringFound", elapsed)


def test_v1_has_no_lmstudio_extras(daemon: RunningDaemon) -> None:
    status, body = post_json(f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=4))
    assert status == 200
    assert not {"stats", "model_info", "runtime"} & set(body)


def test_same_seed_same_text(daemon: RunningDaemon) -> None:
    body = chat_body("Write a short poem", max_tokens=24, temperature=1.0, seed=1234)
    first = post_json(f"{daemon.url}/v1/chat/completions", body)[1]
    second = post_json(f"{daemon.url}/v1/chat/completions", body)[1]
    other = post_json(f"{daemon.url}/v1/chat/completions", {**body, "seed": 99})[1]
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    assert text != other["choices"][0]["message"]["content"]


def test_max_tokens_and_minus_one(daemon: RunningDaemon) -> None:
    status, body = post_json(
        f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=3, logit_bias=EOS_BIASED_AWAY)
    )
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    status, body = post_json(
        f"{daemon.url}/v1/chat/completions", chat_body("Say yes", max_tokens=-1, temperature=0)
    )
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"


def test_logprobs_are_returned(daemon: RunningDaemon) -> None:
    status, body = post_json(
        f"{daemon.url}/v1/chat/completions",
        chat_body(
            "Say hi with an emoji",
            max_tokens=6,
            logprobs=True,
            top_logprobs=3,
            seed=3,
            logit_bias=EOS_BIASED_AWAY,
        ),
    )
    assert status == 200
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 6
    for item in content:
        assert isinstance(item["token"], str) and item["logprob"] <= 0
        assert len(item["top_logprobs"]) == 3
    # A token may hold part of a UTF-8 character: its exact `bytes` rebuild the text.
    raw = b"".join(bytes(i["bytes"]) for i in content)
    assert raw.decode("utf-8") == body["choices"][0]["message"]["content"]


def test_keep_alive_sets_the_jit_ttl(daemon: RunningDaemon) -> None:
    daemon.lms("unload", "--all", check=True)
    status, _ = post_json(
        f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=2, keep_alive="5m")
    )
    assert status == 200
    instance = daemon.lms.json("ps")[0]
    assert instance["ttlMs"] == 300_000 and instance["origin"] == "jit"


def generated_tokens(daemon: RunningDaemon) -> float:
    """The daemon's count of tokens generated by finished predictions (`GET /metrics`)."""
    lines = read_metrics(daemon.url, daemon.lms, timeout=60).splitlines()
    prefix = f'lmsd_generated_tokens_total{{model="{MODEL}"}} '
    return next((float(x.removeprefix(prefix)) for x in lines if x.startswith(prefix)), 0.0)


def test_disconnect_mid_stream_frees_the_model_at_once(daemon: RunningDaemon) -> None:
    body = chat_body("Tell me a long story", max_tokens=3000, logit_bias=EOS_BIASED_AWAY)
    before = generated_tokens(daemon)
    stream = SseStream(daemon.url, "/v1/chat/completions", body)
    events = stream.events()
    for _ in range(3):
        next(events)
    stream.close()

    def idle() -> bool:
        return all(i["inFlight"] == 0 for i in daemon.lms.json("ps"))

    assert wait_until(idle, timeout=60)
    # Left running to the end of its context, the abandoned generation would have counted
    # its tokens when it finished: it was stopped instead.
    assert generated_tokens(daemon) == before, "the abandoned generation ran to its end"
    status, reply = post_json(f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=4))
    assert status == 200 and reply["choices"][0]["message"]["content"]
    assert generated_tokens(daemon) == before + reply["usage"]["completion_tokens"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v0/chat/completions"])
def test_malformed_json_is_400(daemon: RunningDaemon, path: str) -> None:
    request = urllib.request.Request(
        f"{daemon.url}{path}", data=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("accepted malformed JSON")
    except urllib.error.HTTPError as exc:
        error = assert_error(exc.code, json.loads(exc.read()), 400)
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/chat/completions", {"model": MODEL}, "messages", "missing_required_parameter"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}]},
            "model",
            "missing_required_parameter",
        ),
        ("/v1/completions", {"model": MODEL}, "prompt", "missing_required_parameter"),
        ("/v1/embeddings", {"model": MODEL}, "input", "missing_required_parameter"),
        ("/v1/chat/completions", chat_body(temperature="hot"), "temperature", "invalid_type"),
        ("/v1/chat/completions", chat_body(max_tokens="ten"), "max_tokens", "invalid_type"),
        ("/v1/chat/completions", chat_body(stop=5), "stop", "invalid_type"),
        ("/v1/chat/completions", chat_body(n=17), "n", "invalid_value"),
        ("/v1/chat/completions", chat_body(temperature=3), "temperature", "invalid_value"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "king"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            chat_body(response_format={"type": "xml"}),
            "response_format",
            "invalid_value",
        ),
        ("/v1/chat/completions", chat_body(tool_choice="required"), "tool_choice", None),
        ("/v1/chat/completions", chat_body(ttl="soon"), "ttl", "invalid_value"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    daemon: RunningDaemon, path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    status, reply = post_json(f"{daemon.url}{path}", body)
    assert_error(status, reply, 400, param=param, code=code)


def test_unknown_fields_are_ignored(daemon: RunningDaemon) -> None:
    status, _ = post_json(
        f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=2, user="me", frobnicate=True)
    )
    assert status == 200


def test_unknown_model_is_404_listing_models(daemon: RunningDaemon) -> None:
    for path in ("/v1/chat/completions", "/api/v0/chat/completions"):
        status, body = post_json(f"{daemon.url}{path}", {**chat_body(), "model": "gpt-9"})
        error = assert_error(status, body, 404, code="model_not_found")
        assert MODEL in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_with_both_counts(
    daemon: RunningDaemon, stream: bool
) -> None:
    long_prompt = "alpha beta gamma delta " * 400  # ~1600 tokens, context is 1024
    status, body = post_json(
        f"{daemon.url}/api/v0/chat/completions", chat_body(long_prompt, stream=stream, max_tokens=5)
    )
    error = assert_error(status, body, 400, code="context_length_exceeded")
    numbers = [int(w) for w in error["message"].replace(",", " ").split() if w.isdigit()]
    assert 1024 in numbers and any(n > 1024 for n in numbers), error["message"]


def test_unknown_route_is_404(daemon: RunningDaemon) -> None:
    status, body = post_json(f"{daemon.url}/chat/completions", chat_body())
    assert_error(status, body, 404, code="unknown_route")
    status, body = http_get(f"{daemon.url}/v2/models")
    assert_error(status, body, 404, code="unknown_route")


def test_oversized_body_is_413(daemon: RunningDaemon) -> None:
    status, body = post_json(f"{daemon.url}/v1/chat/completions", chat_body("x" * 300 * 1024))
    assert_error(status, body, 413, code="payload_too_large")


def test_embeddings_need_an_embedding_model(daemon: RunningDaemon) -> None:
    status, body = post_json(f"{daemon.url}/v1/embeddings", {"model": MODEL, "input": "hi"})
    error = assert_error(status, body, 400, code="model_not_supported")
    assert "not an embedding model" in error["message"]


def test_daemon_survives_all_of_the_above(daemon: RunningDaemon) -> None:
    assert http_get(f"{daemon.url}/health") == (200, {"status": "ok"})
    status, _ = post_json(f"{daemon.url}/v1/chat/completions", chat_body(max_tokens=2))
    assert status == 200


EMBEDDER = "text-embedding-all-minilm-l6-v2"


@pytest.fixture
def embedder(daemon: RunningDaemon) -> str:
    from tests.fixtures import minilm

    reason = minilm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return EMBEDDER


def test_v0_embeddings_have_the_seed_shape(daemon: RunningDaemon, embedder: str) -> None:
    status, body = post_json(
        f"{daemon.url}/api/v0/embeddings", {"model": embedder, "input": "Some text to embed"}
    )
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == f"{embedder}@f16"
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 384
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_embeddings_match_the_reference_vectors(daemon: RunningDaemon, embedder: str) -> None:
    import math

    from tests.fixtures import minilm

    reference = minilm.load_reference()
    status, body = post_json(
        f"{daemon.url}/v1/embeddings", {"model": embedder, "input": [r["text"] for r in reference]}
    )
    assert status == 200, body
    assert [d["index"] for d in body["data"]] == list(range(len(reference)))
    for item, ref in zip(body["data"], reference, strict=True):
        ours, theirs = item["embedding"], ref["embedding"]
        cosine = sum(a * b for a, b in zip(ours, theirs, strict=True)) / (
            math.sqrt(sum(a * a for a in ours)) * math.sqrt(sum(b * b for b in theirs))
        )
        assert cosine >= 0.999, (ref["text"], cosine)
    assert body["usage"]["prompt_tokens"] == sum(len(r["token_ids"]) for r in reference)


def test_chat_with_an_embedding_model_is_400(daemon: RunningDaemon, embedder: str) -> None:
    status, body = post_json(
        f"{daemon.url}/v1/chat/completions", {**chat_body(), "model": embedder}
    )
    error = assert_error(status, body, 400, code="model_not_supported")
    assert "embedding model" in error["message"]
