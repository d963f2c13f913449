"""Property-based fuzz run over every JSON endpoint of an in-process daemon (fake engine):
Hypothesis bodies from /openapi.json's schemas, garbage, deep nesting, wrong content types.
Prints the requests tried, the endpoints, the statuses and every 5xx found; exits 1 if any
5xx, a daemon that stopped answering, or an instance left with requests in flight.

    .venv/bin/python bench/fuzz.py [--examples N] [--seed S]

The short, fixed run of the same code is tests/unit/test_fuzz.py (in the test command).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz import fuzz, fuzz_target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="requests per endpoint")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    started = time.monotonic()
    with fuzz_target() as target:
        report = fuzz(target, args.examples, seed=seed)
        alive = target.request("GET", "/health")[0] == 200
        in_flight = target.settled()
    elapsed = time.monotonic() - started
    print(f"seed:           {seed}")
    print(f"requests tried: {report.requests} in {elapsed:.0f} s")
    print(f"endpoints:      {len(report.endpoints)}")
    for endpoint in report.endpoints:
        print(f"  {endpoint}")
    print(f"statuses:       {json.dumps(dict(sorted(report.statuses.items())))}")
    print(f"5xx found:      {len(report.server_errors)}")
    for error in report.server_errors:
        print(f"  {error}")
    print(f"daemon up:      {alive}")
    print(f"in flight:      {in_flight}")
    stuck = {k: v for k, v in in_flight.items() if v}
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    figures = {
        "seed": seed,
        "examples_per_endpoint": args.examples,
        "requests": report.requests,
        "endpoints": report.endpoints,
        "statuses": report.statuses,
        "server_errors": report.server_errors,
        "daemon_up": alive,
        "in_flight": in_flight,
        "seconds": round(elapsed, 1),
    }
    (results / "fuzz.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if not report.server_errors and alive and not stuck else 1


if __name__ == "__main__":
    sys.exit(main())
