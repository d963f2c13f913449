"""A prompt far too long for the context is refused before it is tokenized
(streaming.check_prompt_size), through the whole daemon with the fake engine; prompts
near the limit are still counted exactly."""

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.engines import fake_impl
from daemon.engines.fake_impl import MAX_TOKEN_BYTES, TOKEN_RE, FakeEngine
from daemon.engines.streaming import check_prompt_size
from daemon.errors import ContextOverflow
from daemon.server import Daemon
from tests.inprocess import Client, running_daemon

CONTEXT = 1024  # in_process_daemon's default_context_length
HUGE = "lorem ipsum dolor " * 200_000  # 3.6 MB


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the fake engine tokenizes."""
    seen: list[int] = []
    real = FakeEngine.count_tokens

    def counting(self: FakeEngine, text: str) -> int:
        seen.append(len(text))
        return real(self, text)

    monkeypatch.setattr(FakeEngine, "count_tokens", counting)
    return seen


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_a_huge_prompt_is_refused_without_tokenizing_it(
    client: Client, counted: list[int], kind: str
) -> None:
    body: dict[str, Any] = {"model": "echo", "max_tokens": 4}
    if kind == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": HUGE}]
    else:
        path, body["prompt"] = "/v1/completions", HUGE
    raw = json.dumps(body).encode()
    response = await client.post(
        path, data=io.BytesIO(raw), headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert str(CONTEXT) in error["message"]
    assert "the prompt is at least " in error["message"]  # a bound, not a count
    assert [n for n in counted if n >= len(HUGE)] == []  # never tokenized


async def test_prompts_near_the_limit_are_still_counted(client: Client, counted: list[int]) -> None:
    over = "word " * (CONTEXT + 10)  # over the context, but not by the size bound
    response = await client.post("/v1/completions", json={"model": "echo", "prompt": over})
    assert response.status == 400
    message = (await response.json())["error"]["message"]
    assert f"the prompt is {len(TOKEN_RE.findall(over))} tokens" in message  # exact count
    assert len(over) in counted
    fits = "word " * 100
    response = await client.post(
        "/v1/completions", json={"model": "echo", "prompt": fits, "max_tokens": 3}
    )
    assert response.status == 200
    assert (await response.json())["usage"]["prompt_tokens"] == 100


def test_the_bound_is_a_lower_bound_of_the_fake_tokenizer() -> None:
    # Texts made of the longest tokens the fake tokenizer makes: the bound never refuses
    # a text that would fit.
    worst = [
        ("\U0001f600" * fake_impl.TOKEN_CHARS + " " * fake_impl.TOKEN_CHARS) * 50,
        " " * 10_000,
        "x" * 10_000,
        "\u00e9" * 10_000 + " " * 10_000,
    ]
    for text in worst:
        tokens = len(TOKEN_RE.findall(text))
        assert len(text.encode()) // MAX_TOKEN_BYTES <= tokens
        check_prompt_size(text, tokens + 1, MAX_TOKEN_BYTES)  # fits: nothing raised
        with pytest.raises(ContextOverflow):
            check_prompt_size(text * MAX_TOKEN_BYTES, tokens, MAX_TOKEN_BYTES)
