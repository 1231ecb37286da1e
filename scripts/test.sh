#!/usr/bin/env bash
# Install everything (service + export + dev tools) into .venv-train, build the default
# models (cached), then lint, type-check and run the whole test suite (the README's second
# command). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
.venv-train/bin/python -m pip install --quiet --upgrade pip
.venv-train/bin/python -m pip install --quiet -e ".[export,dev]"
.venv-train/bin/python scripts/build_models.py

echo "==> ruff"
.venv-train/bin/ruff check .
echo "==> mypy service"
.venv-train/bin/mypy service
echo "==> pytest"
.venv-train/bin/python -m pytest "$@"
