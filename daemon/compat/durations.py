"""Idle TTLs as clients send them, parsed once at the edge into seconds.

`ttl` (LM Studio): seconds. `keep_alive` (Ollama): a duration string like "5m", "1h30m",
"90s", or a number of seconds. A negative value (`-1`, "-1", "-5m": Ollama's and LM
Studio's "never unload") keeps the model loaded forever; 0 unloads it as soon as it is
idle. NaN, infinities, values beyond MAX_TTL_SECONDS (ten years) and anything that is
not a number or a duration are refused with a 400 naming the field.
Result: seconds, `math.inf` for forever, None if unset.
"""

import math
import re
from typing import Any

from daemon.errors import InvalidRequest

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600.0  # ten years; beyond that, say -1 (never)


def _invalid(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' must be a number of seconds (at most {MAX_TTL_SECONDS:.0f}, or -1 to "
        'never unload) or a duration like "5m" or "1h30m"',
        param=param,
        code="invalid_value",
    )


def _bounded(seconds: float, param: str) -> float:
    if not math.isfinite(seconds) or seconds > MAX_TTL_SECONDS:
        raise _invalid(param)
    return seconds


def parse_duration(text: str, *, param: str) -> float:
    cleaned = text.strip().lower()
    forever = cleaned.startswith("-")
    if forever:
        cleaned = cleaned[1:].lstrip()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise _invalid(param) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if forever:  # any negative duration; "-nan" and "-inf" are no durations at all
        if not math.isfinite(seconds):
            raise _invalid(param)
        return math.inf
    return _bounded(seconds, param)


def parse_seconds(value: Any, *, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid(param)
    if isinstance(value, int):  # compared exactly: 10**400 never becomes a float
        if value < 0:
            return math.inf
        if value > MAX_TTL_SECONDS:
            raise _invalid(param)
        return float(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise _invalid(param)
        return math.inf if value < 0 else _bounded(value, param)
    if isinstance(value, str):
        return parse_duration(value, param=param)
    raise _invalid(param)


def request_ttl(body: dict[str, Any]) -> float | None:
    """The idle TTL a request asks for (`ttl` wins over `keep_alive`), or None."""
    ttl = parse_seconds(body.get("ttl"), param="ttl")
    return ttl if ttl is not None else parse_seconds(body.get("keep_alive"), param="keep_alive")
