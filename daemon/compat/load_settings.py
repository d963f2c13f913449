"""The load settings of a request body (`POST /api/v1/models/load`, a model's saved
defaults), parsed once into a `LoadRequest` and an idle TTL.

Generic over `LoadRequest`: each of its fields is read from the body key of the same name
(`gpu` for `gpu_ratio`, as LM Studio names it), checked against the field's type, so a
new load setting needs no code here. Values are checked further (ranges, choices) where
the load is planned (`ModelManager.resolve_config`), for every way a load can start.
"""

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.compat.durations import parse_seconds
from daemon.compat.fields import optional
from daemon.errors import InvalidRequest
from daemon.instance import LoadRequest

# LoadRequest fields whose name in the API differs.
WIRE_NAMES = {"gpu_ratio": "gpu"}
TTL = "ttl"


@dataclass(frozen=True)
class LoadSettings:
    request: LoadRequest
    ttl: float | None  # seconds, math.inf for never; None: not given


def setting_names() -> list[str]:
    """Every load setting the API takes, by its API name."""
    return [WIRE_NAMES.get(f.name, f.name) for f in dataclasses.fields(LoadRequest)] + [TTL]


def _gpu_ratio(value: Any, name: str) -> float:
    if value == "off":
        return 0.0
    if value == "max":
        return 1.0
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise InvalidRequest(
        f'\'{name}\' must be "off", "max" or a number between 0 and 1',
        param=name,
        code="invalid_value",
    )


def _positive(value: Any, name: str) -> int:
    number: int = optional({name: value}, name, int)
    if number < 1:
        raise InvalidRequest(f"'{name}' must be at least 1", param=name, code="invalid_value")
    return number


def _flash(value: Any, name: str) -> str:
    """LM Studio sends a boolean; we also take "on", "off" and "auto"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    raise InvalidRequest(
        f'\'{name}\' must be true, false, "on", "off" or "auto"',
        param=name,
        code="invalid_value",
    )


# Fields read other than by their type alone.
SPECIAL: dict[str, Callable[[Any, str], Any]] = {
    "gpu_ratio": _gpu_ratio,
    "context_length": _positive,
    "parallel": _positive,
    "threads": _positive,
    "flash_attention": _flash,
}


def _kinds(annotation: Any) -> tuple[type, ...]:
    """The JSON types a field takes: `int | None` -> (int,)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(k for k in typing.get_args(annotation) if k is not type(None))
    return (annotation,)


def parse_load_settings(body: Mapping[str, Any]) -> LoadSettings:
    """The load settings given in `body` (others are ignored); a wrong type or value is
    an InvalidRequest naming the field."""
    hints = typing.get_type_hints(LoadRequest)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(LoadRequest):
        name = WIRE_NAMES.get(field.name, field.name)
        value = body.get(name)
        if value is None:
            continue
        special = SPECIAL.get(field.name)
        values[field.name] = (
            special(value, name)
            if special is not None
            else optional({name: value}, name, *_kinds(hints[field.name]))
        )
    return LoadSettings(LoadRequest(**values), parse_seconds(body.get(TTL), param=TTL))


def settings_to_wire(settings: LoadSettings) -> dict[str, Any]:
    """The settings given, by their API names (what a model's defaults file holds)."""
    wire: dict[str, Any] = {}
    for field in dataclasses.fields(LoadRequest):
        value = getattr(settings.request, field.name)
        if value is not None:
            wire[WIRE_NAMES.get(field.name, field.name)] = value
    if settings.ttl is not None:
        wire[TTL] = -1 if settings.ttl == float("inf") else settings.ttl
    return wire
