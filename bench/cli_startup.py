"""How long `lms` takes to start, against `python -c pass` measured in the same run.

    .venv/bin/python bench/cli_startup.py [--runs 20]

Prints a table (median and p90 wall time per command, ratio to the baseline) and writes
bench/results/cli_startup.json. `lms ps`-like calls are timed against a stopped daemon
(socket absent), so the figure is the CLI's own start-up, not the daemon's answer.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "lms --help": [sys.executable, "-m", "lms", "--help"],
    "lms server status --json": [sys.executable, "-m", "lms", "server", "status", "--json"],
    "lms daemon status": [sys.executable, "-m", "lms", "daemon", "status"],
}


def time_command(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    env = dict(os.environ, LMS_HOME=tempfile.mkdtemp(prefix="lms-bench-"))
    results = {}
    for name, argv in COMMANDS.items():
        time_command(argv, 2, env)  # warm the page cache
        samples = sorted(time_command(argv, args.runs, env))
        results[name] = {
            "median_ms": statistics.median(samples) * 1000,
            "p90_ms": samples[int(len(samples) * 0.9) - 1] * 1000,
        }
    baseline = results["python -c pass (baseline)"]["median_ms"]
    print(f"{'command':32} {'median ms':>10} {'p90 ms':>8} {'x baseline':>11}")
    for name, figures in results.items():
        figures["ratio"] = figures["median_ms"] / baseline
        print(
            f"{name:32} {figures['median_ms']:10.1f} {figures['p90_ms']:8.1f}"
            f" {figures['ratio']:11.2f}"
        )
    out = Path(__file__).parent / "results" / "cli_startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
