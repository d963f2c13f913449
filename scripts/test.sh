#!/usr/bin/env bash
# Runs every check: installs what is missing, then lint, types, import contracts and the
# whole test suite (unit tests with the fake engine, integration tests with the real daemon
# and model).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --no-start
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> import contracts"
.venv/bin/lint-imports --no-cache --no-logo
echo "==> pytest"
.venv/bin/pytest -q "$@"
