"""Parallel requests through the real daemon's HTTP API: concurrent streams of different
lengths and parameters run side by side in one instance's slots, each gets its own
tokens, and greedy output is the same alone and batched."""

import threading
import time
from typing import Any

import pytest

from tests.integration.conftest import RunningDaemon
from tests.support import SseStream, post_json

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
MARKERS = ("zebra", "walnut", "saturn", "copper")


def copy_prompt(word: str) -> str:
    examples = "Input: cat\nOutput: cat\nInput: river\nOutput: river\n"
    return f"Copy the word.\n{examples}Input: {word}\nOutput:"


def body(word: str, i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": copy_prompt(word),
        "temperature": 0,
        "max_tokens": 3 + 3 * i,
        "stop": ["\n"] if i % 2 else None,
        "logprobs": i == 3 or None,
    }


def test_four_concurrent_streams_each_get_their_own_words(daemon: RunningDaemon) -> None:
    daemon.lms("unload", "--all", check=True)
    daemon.lms("load", MODEL, "--parallel", "4", check=True)
    alone = {
        w: post_json(f"{daemon.url}/v1/completions", body(w, i))[1]["choices"][0]["text"]
        for i, w in enumerate(MARKERS)
    }
    for word, text in alone.items():
        assert word in text, (word, text)

    results: dict[str, str] = {}
    busy_seen: list[int] = []

    def stream(i: int, word: str) -> None:
        text = ""
        with SseStream(daemon.url, "/v1/completions", body(word, i)) as s:
            for event in s.events():
                if event != "[DONE]" and event["choices"]:
                    text += event["choices"][0]["text"]
        results[word] = text

    threads = [threading.Thread(target=stream, args=(i, w)) for i, w in enumerate(MARKERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and time.monotonic() - started < 60:
        busy_seen.append(daemon.lms.json("ps")[0]["inFlight"])
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    assert max(busy_seen, default=0) >= 2, "the streams overlapped in the instance"
    for word in MARKERS:
        others = set(MARKERS) - {word}
        assert word in results[word] and not any(o in results[word] for o in others)
        assert results[word] == alone[word], "greedy output is the same alone and batched"
    assert daemon.lms.json("ps")[0]["queued"] == 0
