#!/usr/bin/env bash
# Install everything (service + export + dev tools) into .venv-train, build the default
# models (cached), then lint, type-check and run the whole test suite (the README's second
# command). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The playground tests drive a real headless Chromium (Debian's chromium + chromium-driver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium and chromium-driver (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "tests need Chromium: sudo apt-get install chromium chromium-driver" >&2
    exit 2
  fi
fi

# The face-gallery tests run against SQLite and a real PostgreSQL: Debian's postgresql (installed
# if missing), a throwaway cluster started here and stopped when this script ends.
IIS_TEST_DATABASE_URL=$(scripts/postgres.sh start)
export IIS_TEST_DATABASE_URL IIS_TEST_REQUIRE_POSTGRES=1
trap 'scripts/postgres.sh stop' EXIT

[ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
.venv-train/bin/python -m pip install --quiet --upgrade pip
# client/ (its own distribution, with the `iis` command) in the same pip command as the service
.venv-train/bin/python -m pip install --quiet -e "./client[cli]" -e ".[export,dev]"
.venv-train/bin/python -m scripts build-models

echo "==> ruff"
.venv-train/bin/ruff check .
.venv-train/bin/ruff format --check .  # Python and the Python blocks of the docs
echo "==> mypy service client"
.venv-train/bin/mypy service client/iis_client
echo "==> hadolint (Dockerfile, deploy/Dockerfile.cuda)"
PATH="$PWD/.venv-train/bin:$PATH" scripts/lint_docker.sh
echo "==> mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 .venv-train/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
echo "==> pytest"
.venv-train/bin/python -m pytest "$@"
