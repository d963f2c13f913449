"""The CLI's command line before Typer parses it (in process: importing the CLI must
raise no warning, which the test settings turn into errors)."""

import pytest

from lms.cli.main import bare_option_values


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["server", "start", "--cors"], ["server", "start", "--cors=*"]),
        (
            ["server", "start", "--cors", "--port", "1"],
            ["server", "start", "--cors=*", "--port", "1"],
        ),
        (
            ["server", "start", "--cors", "https://a.example"],
            ["server", "start", "--cors", "https://a.example"],
        ),
        (
            ["server", "start", "--cors=https://a.example"],
            ["server", "start", "--cors=https://a.example"],
        ),
        (["ls", "--json"], ["ls", "--json"]),
    ],
)
def test_a_bare_cors_means_any_origin(argv: list[str], expected: list[str]) -> None:
    assert bare_option_values(argv) == expected
