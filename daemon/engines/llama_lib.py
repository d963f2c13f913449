"""llama-cpp-python's C API (its ctypes bindings) without its high-level package.

`import llama_cpp` runs the package's __init__, which imports the high-level `Llama` class
and with it numpy, jinja2's whole environment and diskcache: about 15 MiB more resident
memory in every worker, which needs only the C API (bench/memory_breakdown.py). Here the
package is entered as a lean module whose submodules load from the installed package as
usual: the bindings (`llama_cpp.llama_cpp`, `llama_cpp.mtmd_cpp`) at once, anything else
of the package (`Llama` for embedding instances, say) on first use, so code that does
`import llama_cpp` later in the same process still finds every name it expects.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["VERSION", "llama_cpp", "mtmd_cpp", "set_verbose"]

PACKAGE = "llama_cpp"


def _lean_package() -> types.ModuleType:
    """The `llama_cpp` package, entered without running its __init__ if not yet imported."""
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llama-cpp-python is not installed")
    package = types.ModuleType(PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__version__ = _version(spec.origin)  # type: ignore[attr-defined]

    def complete(name: str) -> Any:
        """A name the real __init__ would have brought in (`from .llama import *`)."""
        if name.startswith("__"):  # dunder probes (inspect, pickle) load nothing
            raise AttributeError(name)
        high_level = importlib.import_module(f"{PACKAGE}.llama")
        try:
            return getattr(high_level, name)
        except AttributeError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[PACKAGE] = package
    try:
        bindings = importlib.import_module(f"{PACKAGE}.llama_cpp")
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    # As the real __init__ does (`from .llama_cpp import *`): the C API at the top level.
    for name in getattr(bindings, "__all__", None) or dir(bindings):
        if not name.startswith("_"):
            setattr(package, name, getattr(bindings, name))
    return package


def _version(init_path: str | None) -> str:
    """The package's version, from its __init__ (`__version__ = "0.3.36"`)."""
    if init_path:
        found = re.search(r'__version__\s*=\s*"([^"]+)"', Path(init_path).read_text())
        if found:
            return found.group(1)
    return "unknown"


_package = _lean_package()
llama_cpp: Any = importlib.import_module(f"{PACKAGE}.llama_cpp")
mtmd_cpp: Any = importlib.import_module(f"{PACKAGE}.mtmd_cpp")
# The package's log callback (llama.cpp's log lines through one switch): quiet by default.
_logger: Any = importlib.import_module(f"{PACKAGE}._logger")
VERSION: str = str(getattr(_package, "__version__", "unknown"))


def set_verbose(verbose: bool) -> None:
    """Whether llama.cpp's own log lines (loading, backends) reach stderr."""
    _logger.set_verbose(verbose)


set_verbose(False)
