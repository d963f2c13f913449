"""Model lifecycle with the real daemon, CLI and SmolLM2: load/unload/ps, idle TTL, JIT
loading, auto-evict, worker crashes, the memory guardrail, restore on restart."""

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import (
    DaemonFolders,
    LmsRunner,
    SseStream,
    http_get,
    link_smollm2,
    post_json,
    read_metrics,
    smollm2_file,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]

A = "smollm2-135m-instruct"
B = "smollm2-b"
M = "smollm2-m"
EOS_BIASED_AWAY = {"2": -100}  # SmolLM2's <|im_end|>: every stream runs to max_tokens


@pytest.fixture
def models_dir(folders: DaemonFolders) -> Path:
    models = folders.root / "models"
    link_smollm2(models)
    source = smollm2_file()
    assert source is not None
    for name in ("B", "M"):
        target = models / "test" / f"SmolLM2-{name}-GGUF" / f"SmolLM2-{name}.Q4_1.gguf"
        target.parent.mkdir(parents=True)
        target.symlink_to(source)
    folders.extra_env.update(
        {"LMS_MODELS_DIRS": str(models), "LMS_DEFAULT_CONTEXT_LENGTH": "1024", "LMS_METRICS": "1"}
    )
    return models


@pytest.fixture
def server(
    folders: DaemonFolders, lms: LmsRunner, models_dir: Path, free_port: int
) -> Iterator[str]:
    lms("server", "start", "--port", str(free_port), check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def chat(server: str, model: str, max_tokens: int = 4, **extra: Any) -> tuple[int, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    return post_json(f"{server}/v1/chat/completions", body)


def loaded(lms: LmsRunner) -> dict[str, dict[str, Any]]:
    return {i["identifier"]: i for i in lms.json("ps")}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_load_with_ttl_then_idle_unload(server: str, lms: LmsRunner) -> None:
    # When exactly the TTL fires (`ttl` seconds after the last request, never before, never
    # while busy) is tested with a controlled clock in tests/unit/test_manager.py; here, the
    # order of what a user sees.
    result = lms("load", A, "--ttl", "5", check=True)
    assert "Model loaded successfully in" in result.stderr
    done = next(line for line in result.stderr.splitlines() if line.startswith("Model loaded"))
    assert done.endswith("s. (98.36 MB)"), "the model's size"  # after the progress lines
    assert f'use the identifier "{A}"' in result.stderr
    instance = loaded(lms)[A]
    assert instance["ttlMs"] == 5000 and instance["origin"] == "manual"
    assert instance["status"] == "idle" and instance["contextLength"] == 1024
    pid = instance["pid"]
    assert psutil.pid_exists(pid)
    table = lms("ps", check=True).stdout
    assert table.splitlines()[0].split() == [
        "IDENTIFIER",
        "MODEL",
        "STATUS",
        "SIZE",
        "CONTEXT",
        "PARALLEL",
        "DEVICE",
        "TTL",
    ]
    assert " / 5s" in table and "IDLE" in table

    assert chat(server, A)[0] == 200
    after = loaded(lms).get(A)
    assert after is not None, "still loaded right after the request"
    assert after["pid"] == pid and after["origin"] == "manual", "served by the loaded instance"
    assert after["lastUsedTime"] > instance["lastUsedTime"], "the request restarted the TTL"
    assert 0 < after["ttlRemainingMs"] <= 5000
    assert wait_until(lambda: A not in loaded(lms), timeout=60), "unloaded once idle"
    assert wait_until(lambda: gone(pid), timeout=30), "the worker process exited"


def test_stream_keeps_an_instance_with_no_idle_ttl_alive(server: str, lms: LmsRunner) -> None:
    # TTL 0: unloaded the moment it is idle. A stream that did not hold the instance would
    # lose it after its first token, however fast or slow the machine.
    body = {
        "model": A,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 400,
        "ttl": 0,
        "logit_bias": EOS_BIASED_AWAY,
    }
    tokens = 0
    finish = None
    with SseStream(server, "/v1/chat/completions", body) as stream:
        assert stream.status == 200
        for event in stream.events():
            if event == "[DONE]":
                break
            assert "error" not in event, event
            if not event["choices"]:
                continue
            choice = event["choices"][0]
            tokens += bool(choice["delta"].get("content"))
            finish = choice["finish_reason"] or finish
    assert finish == "length", "the stream ran to its end: the instance outlived the TTL"
    assert tokens > 1, "tokens kept coming"
    assert wait_until(lambda: A not in loaded(lms), timeout=60), "unloads once idle"


def test_ten_concurrent_first_requests_make_one_instance(
    server: str, lms: LmsRunner, folders: DaemonFolders
) -> None:
    results: list[int] = []

    def one() -> None:
        results.append(chat(server, B, max_tokens=2)[0])

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [200] * 10
    assert list(loaded(lms)) == [B]
    log_text = (folders.root / "log" / "lmsd.log").read_text()
    assert log_text.count(f"loaded {B} in") == 1


def test_jit_auto_evict_spares_manual_loads_and_busy_streams(server: str, lms: LmsRunner) -> None:
    lms("load", M, check=True)
    assert chat(server, A)[0] == 200
    assert set(loaded(lms)) == {M, A}
    assert loaded(lms)[A]["origin"] == "jit"

    assert chat(server, B)[0] == 200
    assert set(loaded(lms)) == {M, B}, "JIT-loading B evicted JIT A, not the manual M"

    body = {
        "model": B,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 300,
        "logit_bias": EOS_BIASED_AWAY,
    }
    with SseStream(server, "/v1/chat/completions", body) as stream:
        events = stream.events()
        next(events)  # B is streaming now
        status, reply = chat(server, A)  # JIT-loads A: B must drain, not be cut off
        assert status == 200, reply
        state = loaded(lms)
        assert state[B]["state"] == "draining" and state[B]["status"] == "generating"
        rest = list(events)
    assert rest[-1] == "[DONE]"
    finals = [e for e in rest if e != "[DONE]" and e["choices"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "length", "B's stream was not cut"
    assert wait_until(lambda: set(loaded(lms)) == {M, A}, timeout=10)


def test_worker_killed_mid_stream(server: str, lms: LmsRunner) -> None:
    lms("load", M, check=True)
    lms("load", A, check=True)
    pid = loaded(lms)[A]["pid"]
    body = {
        "model": A,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 2000,
        "logit_bias": EOS_BIASED_AWAY,
    }
    with SseStream(server, "/v1/chat/completions", body) as stream:
        events = stream.events()
        next(events)
        next(events)
        os.kill(pid, signal.SIGKILL)
        rest = list(events)
    errors = [e for e in rest if e != "[DONE]" and "error" in e]
    assert errors, f"the client was told: {rest[-3:]}"
    assert "died" in errors[0]["error"]["message"]
    assert "[DONE]" not in rest
    assert http_get(f"{server}/health")[0] == 200
    assert wait_until(lambda: A not in loaded(lms), timeout=5), "the dead instance is forgotten"
    assert chat(server, M)[0] == 200, "other instances keep answering"
    assert chat(server, A)[0] == 200, "the next request loads it again"
    assert loaded(lms)[A]["pid"] != pid
    metrics = read_metrics(server, lms)
    assert "lmsd_worker_crashes_total 1.0" in metrics
    assert f'lmsd_generated_tokens_total{{model="{M}"}} 4.0' in metrics


def test_load_is_idempotent_and_identifiers_are_checked(server: str, lms: LmsRunner) -> None:
    lms("load", A, check=True)
    again = lms("load", A, check=True)
    assert "already loaded" in again.stderr
    assert list(loaded(lms)) == [A]
    lms("load", A, "-c", "512", "--identifier", "small", check=True)
    assert set(loaded(lms)) == {A, "small"}
    conflict = lms("load", A, "-c", "256", "--identifier", "small")
    assert conflict.returncode == 1 and "different context_length" in conflict.stderr
    assert chat(server, "small")[0] == 200
    assert lms("unload", "nope").returncode == 1
    result = lms("unload", "small", check=True)
    assert 'Model "small" unloaded.' in result.stderr
    result = lms("unload", "--all", check=True)
    assert "Unloaded 1 model." in result.stderr
    assert loaded(lms) == {}
    fuzzy = lms("load", "smollm2", "-y")
    assert fuzzy.returncode == 1 and "3 models match" in fuzzy.stderr


def test_guardrail_refuses_with_both_numbers(
    folders: DaemonFolders, lms: LmsRunner, models_dir: Path, free_port: int
) -> None:
    folders.extra_env["LMS_MAX_MODEL_MEMORY"] = str(50 * 1000 * 1000)
    lms("server", "start", "--port", str(free_port), check=True)
    try:
        estimate = lms("load", A, "--estimate-only", check=True).stdout
        assert "Estimated Total Memory:" in estimate
        assert "will fail to load" in estimate
        refused = lms("load", A)
        assert refused.returncode == 1
        assert "needs about" in refused.stderr and "allows" in refused.stderr
        assert "MiB" in refused.stderr
        status, body = chat(f"http://127.0.0.1:{free_port}", A)
        assert status == 507 and body["error"]["code"] == "insufficient_memory"
        assert lms.json("ps") == []
        lms("load", A, "--force", check=True)
        assert A in loaded(lms)
    finally:
        lms("daemon", "down")


def test_unload_gives_the_memory_back(server: str, lms: LmsRunner, folders: DaemonFolders) -> None:
    daemon = psutil.Process(folders.daemon_pid())
    daemon_before = daemon.memory_info().rss
    lms("load", A, check=True)
    pid = loaded(lms)[A]["pid"]
    worker_rss = psutil.Process(pid).memory_info().rss
    assert worker_rss > 90 * 1000 * 1000, "the weights live in the worker"
    lms("unload", A, check=True)
    assert wait_until(lambda: gone(pid), timeout=5)
    growth = daemon.memory_info().rss - daemon_before
    assert growth < 30 * 1000 * 1000, f"the daemon grew by {growth} bytes"


def test_manual_loads_come_back_after_a_restart(server: str, lms: LmsRunner) -> None:
    lms("load", M, "--ttl", "600", check=True)
    assert chat(server, A)[0] == 200  # JIT: not restored
    lms("daemon", "down", check=True)
    port = server.rsplit(":", 1)[1]
    lms("server", "start", "--port", port, check=True)
    assert wait_until(lambda: loaded(lms).get(M, {}).get("state") == "loaded", timeout=30)
    restored = loaded(lms)
    assert set(restored) == {M}
    assert restored[M]["origin"] == "manual" and restored[M]["ttlMs"] == 600_000


def test_load_settings_and_the_estimate_through_the_cli(server: str, lms: LmsRunner) -> None:
    flags = ["-c", "4096", "--parallel", "4", "--kv-cache-type-k", "q8_0", "--threads", "1"]
    text = lms("load", A, *flags, "--estimate-only", check=True).stdout
    for part in ("Weights", "KV Cache", "Compute", "Runtime", "Total Memory"):
        assert f"Estimated {part}:" in text, text
    assert "4,096 cells, shared; K q8_0, V f16" in text
    shared = lms.json("load", A, *flags, "--estimate-only")
    per_slot = lms.json("load", A, *flags, "--kv-pool", "per_slot", "--estimate-only")
    assert per_slot["kv_cells"] == 4 * shared["kv_cells"] == 4 * 4096
    assert per_slot["estimate"]["kv_cache_bytes"] == 4 * shared["estimate"]["kv_cache_bytes"]
    bad = lms("load", A, "--kv-cache-type-v", "q4_0", "--flash-attention", "off")
    assert bad.returncode == 2 and "kv-cache-type-v" in bad.stderr
    lms("load", A, *flags, "--seed", "9", "--no-mmap", check=True)
    (instance,) = lms.json("ps")
    settings = instance["loadSettings"]
    assert (settings["kv_cache_type_k"], settings["threads"]) == ("q8_0", 1)
    assert (settings["seed"], settings["use_mmap"], settings["kv_pool"]) == (9, False, "shared")
    assert instance["ignoredSettings"] == []
    # What `lms ps` shows is the worker's measured memory: the estimate was within 15%.
    measured = psutil.Process(instance["pid"]).memory_info().rss
    assert abs(shared["estimate"]["total_bytes"] / measured - 1) <= 0.15
