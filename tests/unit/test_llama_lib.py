"""The llama.cpp engine loads llama-cpp-python's C API without its high-level package
(llama_lib.py): a worker never imports numpy, jinja2 or `llama_cpp.llama` until a request
needs them, and later `import llama_cpp` still sees the whole package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")


def run(code: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_engine_imports_neither_numpy_nor_jinja_nor_the_high_level_api() -> None:
    loaded = run(
        "import json, sys\n"
        "import daemon.engines.worker, daemon.engines.llama_cpp_impl\n"
        "heavy = ('numpy', 'jinja2', 'llama_cpp.llama', 'llama_cpp.llama_chat_format',"
        " 'diskcache', 'PIL')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    assert loaded == []


def test_the_package_is_whole_for_code_that_imports_it_later() -> None:
    found = run(
        "import json, importlib.metadata\n"
        "import daemon.engines.llama_cpp_impl\n"
        "import llama_cpp\n"
        "print(json.dumps([llama_cpp.__version__ == importlib.metadata.version("
        "'llama-cpp-python'), callable(llama_cpp.llama_decode), llama_cpp.Llama.__name__,"
        " hasattr(llama_cpp, '__wrapped__')]))\n"
    )
    assert found == [True, True, "Llama", False]


def test_an_unknown_name_is_an_attribute_error() -> None:
    found = run(
        "import json\n"
        "import daemon.engines.llama_lib\n"
        "import llama_cpp\n"
        "try:\n"
        "    llama_cpp.no_such_name\n"
        "    print(json.dumps('found'))\n"
        "except AttributeError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    assert found == "module 'llama_cpp' has no attribute 'no_such_name'"
