#!/usr/bin/env bash
# Install the service and serve it on the default models (the README's first command).
#
# The default models are built once into ~/.cache/image-inference-service (IIS_CACHE_DIR; that
# build needs torch, installed into .venv-train only when the cache misses) and copied into
# models/. The service itself runs from .venv, which has no torch.
#
# On a cache miss the four models exported from shipped weights (about a minute) are built
# first and served at once; the segmenter, which is trained here (about 12 minutes), builds in
# the background and joins the running server when it is done: the server watches models/
# (IIS_MODEL_CONTROL=poll, the default here) and /readyz lists it under "pending" until then.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

SEGMENTER=shapes-maskrcnn-mobilenet_v2
# The other defaults (scripts/recipes/defaults.py DEFAULTS); build_models rejects a name it lacks.
QUICK=(mobilenet_v2-imagenet yolov3-tiny-coco yunet-2023mar sface-2021dec)
# In models/ so that each checkout keeps its own; a file, so the server's scan ignores it.
SEGMENTER_LOG=models/.segmenter-build.log
segmenter=installed  # installed | building (by an earlier serve.sh, into models/) | start
segmenter_pid=

if "$PY" -m scripts build-models --check --no-test-data >/dev/null 2>&1; then
  # everything cached: install only, which needs neither torch nor the network
  "$PY" -m scripts build-models --no-test-data
else
  echo "==> building the default models (first run only; cached afterwards)"
  [ -x .venv-train/bin/python ] || "$PY" -m venv .venv-train
  .venv-train/bin/python -m pip install --quiet --upgrade pip
  .venv-train/bin/python -m pip install --quiet -e ./client -e ".[export]"
  .venv-train/bin/python -m scripts build-models --only "${QUICK[@]}" --no-test-data
  # --check notes "(being built by pid N into DIR)" when a build holds the segmenter's lock
  building='being built by pid ([0-9]+) into (.+)\)'
  if seg_check=$("$PY" -m scripts build-models --check --only "$SEGMENTER" --no-test-data); then
    "$PY" -m scripts build-models --only "$SEGMENTER" --no-test-data  # cached: install it now
  elif [[ $seg_check =~ $building ]] && [ "${BASH_REMATCH[2]}" = "$(pwd -P)/models" ]; then
    # serve.sh run again while its first run still trains: that build installs it here
    segmenter=building
    segmenter_pid=${BASH_REMATCH[1]}
  else
    segmenter=start
  fi
fi

echo "==> installing the service (no torch) into .venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# the service needs the client distribution's models (client/): one pip command installs both
.venv/bin/python -m pip install --quiet -e ./client -e .

# Models dropped into models/ (the segmenter below, or a user's own) load without a restart.
export IIS_MODEL_CONTROL=${IIS_MODEL_CONTROL:-poll}

if [ "$segmenter" = start ]; then
  # Started last, after every step that can fail, so that a failed install leaves no build
  # running behind it.
  #  - Not stopped with the server: Ctrl-C and a closed terminal (INT, HUP) leave it training,
  #    since a finished build is cached and the next serve.sh just installs it, while a killed
  #    one starts over. It never leaves half a model: only a finished build reaches the cache,
  #    and models/ gets it by an atomic rename. `kill <pid>` (TERM) stops it cleanly, as does
  #    stopping the whole process group (a service manager, scripts/bench/first_answer.py).
  #  - nice: the server's requests come before the training on a busy CPU.
  #  - --skip-if-building: if an earlier serve.sh's build is still training into this same
  #    models/, leave it to that one (it installs the segmenter here when done) rather than
  #    wait; a build into another checkout is waited for, then installed from the cache.
  #  - $( ... & echo $! ): the build is forked from a subshell that exits at once, so it is not
  #    a child of the server (which would leave it a zombie when it ends) and its exit status
  #    cannot trip `set -e`; its output goes to the log, so the substitution returns at once.
  mkdir -p models
  echo "==> $(date '+%F %T') serve.sh: building $SEGMENTER in the background" >>"$SEGMENTER_LOG"
  segmenter_pid=$(
    trap '' INT HUP
    nice -n 10 .venv-train/bin/python -m scripts build-models --only "$SEGMENTER" \
      --no-test-data --skip-if-building </dev/null >>"$SEGMENTER_LOG" 2>&1 &
    echo $!
  )
  echo "==> $SEGMENTER is being trained in the background (pid $segmenter_pid, about 12 min)"
elif [ "$segmenter" = building ]; then
  echo "==> $SEGMENTER is still being trained into models/ by an earlier run (pid $segmenter_pid)"
fi
if [ "$segmenter" != installed ]; then
  echo "    log: $PWD/$SEGMENTER_LOG (when serve.sh started it)."
  echo "    /classify, /detect and /verify-faces answer now; /segment joins when the build is"
  echo "    done. The build outlives Ctrl-C of the server; stop it with: kill $segmenter_pid"
  # /readyz lists it under "pending" until it is loaded, so that users see what is coming.
  export IIS_EXPECTED_MODELS=${IIS_EXPECTED_MODELS:+$IIS_EXPECTED_MODELS,}$SEGMENTER
  if [ "$IIS_MODEL_CONTROL" != poll ]; then
    echo "==> IIS_MODEL_CONTROL=$IIS_MODEL_CONTROL: the server will not pick $SEGMENTER up by" \
      "itself; restart serve.sh (or load it through the API) once the build is done" >&2
  fi
fi

echo "==> serving on http://${IIS_HOST:-127.0.0.1}:${IIS_PORT:-8000}"
exec .venv/bin/python -m service
