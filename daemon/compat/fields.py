"""Reading typed fields out of a JSON body; a wrong type is a 400 naming the field."""

import math
from typing import Any

from daemon.errors import InvalidRequest

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def _finite(value: int | float) -> bool:
    """NaN, the infinities (JSON's NaN/Infinity) and integers beyond a float are no numbers
    a client can mean."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _matches(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def optional(body: dict[str, Any], name: str, *kinds: type) -> Any:
    """`body[name]` when present and not null, checked against `kinds`; else None."""
    value = body.get(name)
    if value is None:
        return None
    if not any(_matches(value, kind) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidRequest(f"'{name}' must be {expected}", param=name, code="invalid_type")
    return float(value) if kinds == (float,) else value


def required(body: dict[str, Any], name: str, *kinds: type) -> Any:
    value = optional(body, name, *kinds)
    if value is None:
        raise InvalidRequest(f"'{name}' is required", param=name, code="missing_required_parameter")
    return value


def in_range(name: str, value: float | None, low: float, high: float) -> None:
    """A 400 naming the field unless `low <= value <= high` (NaN never is)."""
    if value is not None and not (_finite(value) and low <= value <= high):
        raise InvalidRequest(
            f"'{name}' must be between {low:g} and {high:g}", param=name, code="invalid_value"
        )
