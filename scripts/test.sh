#!/usr/bin/env bash
# Runs every check: installs what is missing, then lint, types, import contracts and the
# whole test suite (unit tests with the fake engine, integration tests with the real daemon
# and model).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --no-start
# llama.cpp's own llama-server, for the test that puts one behind the daemon as an upstream
# (tests/integration/test_remote_llama_server.py). Built once, from the llama.cpp source in
# the installed llama-cpp-python's sdist, into bench/.cache (7-18 min on 2 cores the first
# time, then cached). LMS_TEST_LLAMA_SERVER=0 skips the build (that test then skips).
if [ "${LMS_TEST_LLAMA_SERVER:-1}" != 0 ]; then
    if ! command -v cmake >/dev/null; then
        .venv/bin/python -m pip install --quiet cmake
        export PATH="$PWD/.venv/bin:$PATH"
    fi
    echo "==> llama-server for the upstream test (cached in bench/.cache after the first build)"
    mkdir -p bench/.cache
    if ! bash bench/build_llama_server.sh .venv/bin/python >/dev/null \
        2>>bench/.cache/build_llama_server.log; then
        echo "==> llama-server could not be built (bench/.cache/build_llama_server.log):" \
            "its test will be skipped"
    fi
fi
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> import contracts"
.venv/bin/lint-imports --no-cache --no-logo
echo "==> pytest"
.venv/bin/pytest -q "$@"
