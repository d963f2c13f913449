"""How fast is `lms ls` on a big models directory?

Writes N small synthetic GGUFs (each with a tokenizer vocabulary, like real models) in a
temporary directory, then times:
  - baseline: reading every header with gguf-py's `GGUFReader` (what a naive scan does;
              timed on --baseline-sample files and scaled to all of them),
  - cold:     `daemon.catalog.scan` with an empty header cache (reads every header),
  - warm:     `scan` again with the saved cache (reads no header),
  - lms ls:   the real `lms ls` against a real daemon on that directory, cache warm,
              end to end (CLI start-up + HTTP over the Unix socket + listing), next to
              `python -c pass` measured the same way.
Prints a table and writes bench/results/ls_bench.json.

Run from the repository root:  .venv/bin/python -m bench.ls_bench [--models 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from daemon.catalog import scan
from daemon.header_cache import HeaderCache

RESULTS = Path(__file__).parent / "results" / "ls_bench.json"


def make_models(root: Path, count: int, vocab: int) -> list[Path]:
    template = root / "template.gguf"
    w = GGUFWriter(template, "llama")
    w.add_name("Bench")
    w.add_context_length(8192)
    w.add_file_type(15)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"token-{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges([f"t {i}" for i in range(vocab)])
    for i in range(8):
        w.add_tensor(f"blk.{i}.w", np.ones((16, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    blob = template.read_bytes()
    template.unlink()
    files = []
    for i in range(count):
        path = root / "models" / f"publisher{i % 20}" / f"Model{i}-GGUF" / f"Model{i}-Q4_K_M.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        files.append(path)
    return files


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def time_lms_ls(models: Path, home: Path, repeat: int) -> dict[str, list[float]]:
    """`lms ls` end to end against a real daemon serving `models` (warm cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env.update({"LMS_HOME": str(home), "LMS_MODELS_DIRS": str(models)})
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "--no-http"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lms = [sys.executable, "-m", "lms", "ls"]
        deadline = time.monotonic() + 30
        while subprocess.run([*lms, "--json"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.1)  # the first successful call also warms the header cache

        def run(argv: list[str]) -> None:
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)

        return {
            "python_startup": timed(lambda: run([sys.executable, "-c", "pass"]), repeat),
            "lms_ls_end_to_end": timed(lambda: run(lms), repeat),
        }
    finally:
        daemon.terminate()
        daemon.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=10,
        help="GGUFReader is slow: time it on this many files and scale",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_models(root, args.models, args.vocab)
        models, cache_file = root / "models", root / "cache.json"

        sample = files[: args.baseline_sample]

        def baseline() -> None:  # measured on a sample, scaled to all files below
            for f in sample:
                GGUFReader(f)

        def cold() -> None:
            cache_file.unlink(missing_ok=True)
            assert len(scan([models], HeaderCache.load(cache_file))) == args.models

        def warm() -> None:
            assert len(scan([models], HeaderCache.load(cache_file))) == args.models

        scale = args.models / len(sample)
        rows = {
            "baseline_gguf_py_reader": [t * scale for t in timed(baseline, 1)],
            "cold_scan": timed(cold, max(1, args.repeat // 2)),
            "warm_scan": timed(warm, args.repeat),
            **time_lms_ls(models, root / "home", args.repeat),
        }
        size = files[0].stat().st_size
    summary = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "runs": len(t)}
        for name, t in rows.items()
    }
    base = summary["baseline_gguf_py_reader"]["median_s"]
    print(f"{args.models} models, {size} bytes each, vocabulary {args.vocab}")
    print(f"{'measure':<26}{'median ms':>12}{'min ms':>10}{'vs baseline':>14}")
    for name, s in summary.items():
        speedup = base / s["median_s"] if s["median_s"] else float("inf")
        print(f"{name:<26}{s['median_s'] * 1e3:>12.1f}{s['min_s'] * 1e3:>10.1f}{speedup:>13.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "models": args.models,
                "vocab": args.vocab,
                "file_bytes": size,
                "baseline_sample": min(args.baseline_sample, args.models),
                "results": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
