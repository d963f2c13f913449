"""The helpers the CLI and the daemon share."""

import pytest

from lms.units import format_bytes, is_loopback


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (512, "512 B"),
        (1536, "1.50 KiB"),
        (311 * 1024**2, "311.00 MiB"),
        (5 * 1024**4, "5120.00 GiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.2", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
