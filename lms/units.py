"""Small pure helpers the CLI and the daemon share (the daemon imports this; nothing here
imports either side)."""

import ipaddress


def format_bytes(size: float) -> str:
    """Base-1024, as LM Studio prints memory: "512 B", "1.50 KiB", "2.00 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def is_loopback(host: str) -> bool:
    """Whether a host name or address ("localhost", "127.0.0.1", "[::1]") is this
    machine's loopback. Host names are case-insensitive ("LOCALHOST"), and may end in the
    root's dot ("localhost.")."""
    host = host.lower().removesuffix(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
