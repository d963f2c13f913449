"""Engines by name, imported lazily: naming an engine costs nothing until a worker loads
it, and a missing optional library (llama_cpp, mlx) only matters to the engine needing it."""

from __future__ import annotations

import importlib
import importlib.util
from typing import cast

from daemon.engines.base import Engine
from daemon.errors import LoadFailed, UnknownEngine

# engine name -> (module, class name, the third-party module it needs or None)
ENGINES: dict[str, tuple[str, str, str | None]] = {
    "llama_cpp": ("daemon.engines.llama_cpp_impl", "LlamaCppEngine", "llama_cpp"),
    "fake": ("daemon.engines.fake_impl", "FakeEngine", None),
    "mlx": ("daemon.engines.mlx_impl", "MlxEngine", "mlx_lm"),
}
# How to install an optional engine, said when it is missing.
INSTALL_HINTS: dict[str, str] = {
    "llama_cpp": "pip install llama-cpp-python",
    "mlx": (
        "pip install 'lmsd[mlx]' (that is: pip install 'mlx[cpu]' mlx-lm on Linux, "
        "pip install mlx mlx-lm on macOS with Apple silicon)"
    ),
}


def engine_available(name: str) -> bool:
    """Whether `name` is known and its library is installed (checked without importing)."""
    if name not in ENGINES:
        return False
    needs = ENGINES[name][2]
    return needs is None or importlib.util.find_spec(needs) is not None


def load_engine_class(name: str) -> type[Engine]:
    """Imports the engine's module now (only now) and returns its class."""
    if name not in ENGINES:
        raise UnknownEngine(name, sorted(ENGINES))
    module_name, class_name, needs = ENGINES[name]
    hint = f"; install it with: {INSTALL_HINTS[name]}" if name in INSTALL_HINTS else ""
    if needs is not None and importlib.util.find_spec(needs) is None:
        raise LoadFailed(f"engine {name!r} needs the Python package {needs!r}, not installed{hint}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # installed, but a library it needs is missing or broken
        raise LoadFailed(f"engine {name!r} cannot be imported ({exc}){hint}") from exc
    return cast(type[Engine], getattr(module, class_name))
