"""Idle TTLs as clients send them, parsed once at the edge into seconds.

`ttl` (LM Studio): seconds. `keep_alive` (Ollama): a duration string like "5m", "1h30m",
"90s", or a number of seconds; a negative value keeps the model loaded forever and 0
unloads it as soon as it is idle. Result: seconds, `math.inf` for forever, None if unset.
"""

import math
import re
from typing import Any

from daemon.errors import InvalidRequest

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, *, param: str) -> float:
    cleaned = text.strip().lower()
    if cleaned.startswith("-"):
        return math.inf
    try:
        return float(cleaned)
    except ValueError:
        pass
    parts = _PART.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise InvalidRequest(
            f'\'{param}\' must be a number of seconds or a duration like "5m" or "1h30m"',
            param=param,
            code="invalid_value",
        )
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse_seconds(value: Any, *, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"'{param}' must be a number of seconds", param=param)
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    if isinstance(value, str):
        return parse_duration(value, param=param)
    raise InvalidRequest(f"'{param}' must be a number of seconds", param=param)


def request_ttl(body: dict[str, Any]) -> float | None:
    """The idle TTL a request asks for (`ttl` wins over `keep_alive`), or None."""
    ttl = parse_seconds(body.get("ttl"), param="ttl")
    return ttl if ttl is not None else parse_seconds(body.get("keep_alive"), param="keep_alive")
