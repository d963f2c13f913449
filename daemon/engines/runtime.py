"""Engines by name, imported lazily: naming an engine costs nothing until a worker loads
it, and a missing optional library (llama_cpp, mlx) only matters to the engine needing it."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import cast

from daemon.engines.base import Engine
from daemon.errors import LoadFailed, UnknownEngine

# engine name -> (module, class name, the third-party module it needs or None)
ENGINES: dict[str, tuple[str, str, str | None]] = {
    "llama_cpp": ("daemon.engines.llama_cpp_impl", "LlamaCppEngine", "llama_cpp"),
    "fake": ("daemon.engines.fake_impl", "FakeEngine", None),
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
    if needs is not None and importlib.util.find_spec(needs) is None:
        raise LoadFailed(f"engine {name!r} needs the Python package {needs!r}, not installed")
    module = importlib.import_module(module_name)
    return cast(type[Engine], getattr(module, class_name))


def auto_engine(model_path: str | Path) -> str:
    """The engine for a model file when the caller says "auto": GGUF files go to
    llama.cpp; a JSON file is a fake model (tests and demos)."""
    suffix = Path(model_path).suffix.lower()
    if suffix == ".json":
        return "fake"
    return "llama_cpp"
