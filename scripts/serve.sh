#!/usr/bin/env bash
# Install the service and serve it on the default models (the README's first command).
#
# The default models are built once into ~/.cache/image-inference-service (that build needs
# torch, installed into .venv-train only when the cache misses) and copied into models/.
# The service itself runs from .venv, which has no torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" scripts/build_models.py --check --no-test-data >/dev/null 2>&1; then
  echo "==> building the default models (first run only; cached afterwards)"
  [ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
  .venv-train/bin/python -m pip install --quiet --upgrade pip
  .venv-train/bin/python -m pip install --quiet -e ".[export]"
  .venv-train/bin/python scripts/build_models.py --no-test-data
else
  "$PY" scripts/build_models.py --no-test-data
fi

echo "==> installing the service (no torch) into .venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .

echo "==> serving on http://${IIS_HOST:-127.0.0.1}:${IIS_PORT:-8000}"
exec .venv/bin/python -m service
