"""The short fuzz run (tests/fuzz.py) in the test command: a fixed set of Hypothesis
examples for every JSON endpoint of an in-process daemon. The long, randomly seeded run is
`bench/fuzz.py --examples N`."""

from tests.fuzz import fuzz, fuzz_target

EXAMPLES = 25  # per endpoint: ~13 endpoints, a few hundred requests


def test_no_json_endpoint_answers_5xx_or_leaves_work_behind() -> None:
    with fuzz_target() as target:
        report = fuzz(target, EXAMPLES)
        assert report.server_errors == []
        assert len(report.endpoints) >= 12, report.endpoints
        assert report.requests >= EXAMPLES * len(report.endpoints) // 2
        assert 200 in report.statuses and 400 in report.statuses and 415 in report.statuses
        assert target.request("GET", "/health")[0] == 200  # the daemon is still up
        assert not any(target.settled().values()), "an instance was left in flight"
