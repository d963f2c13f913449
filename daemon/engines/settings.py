"""Which of a LoadSpec's engine settings an engine leaves aside, to say so at load."""

from __future__ import annotations

from dataclasses import fields

from daemon.engines.base import LoadSpec

# The LoadSpec fields that are engine settings (chosen by the user, with these defaults).
ENGINE_SETTINGS = (
    "kv_pool",
    "flash_attention",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "n_threads",
    "use_mmap",
    "use_mlock",
    "seed",
    "offload_kqv",
)


def ignored_settings(spec: LoadSpec, applied: frozenset[str]) -> list[str]:
    """The engine settings given a value other than their default that the engine does
    not apply (`applied` names those it does)."""
    defaults = {f.name: f.default for f in fields(LoadSpec)}
    return [
        name
        for name in ENGINE_SETTINGS
        if name not in applied and getattr(spec, name) != defaults[name]
    ]
