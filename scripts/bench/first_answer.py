"""Time how long a fresh checkout's `scripts/serve.sh` takes to give its first answer.

    # warm: the default models are in the cache (what a second run sees)
    python -m scripts time-first-answer --cache ~/.cache/image-inference-service --expect warm
    # cold: a fresh machine; builds everything, trains the segmenter (~15 min with --wait-segment)
    python -m scripts time-first-answer --cache "$(mktemp -d)" --wait-segment

Clones this checkout's current commit (`git clone --local`, so nothing uncommitted) into --repo
(default: a new temp folder), runs its scripts/serve.sh there on a free port with
IIS_CACHE_DIR=--cache, and POSTs a photo to /classify every 0.5 s until the first 200; with
--wait-segment, then to /segment until its first 200. Writes JSON to --out:

    {"seconds_to_first_classify": 71.2, "seconds_to_segment_ready": 790.4,
     "cache": "cold" | "partial" | "warm", "needs_build": [...], ...}

"cache" is what the clone's `build_models.py --check` said before the start: warm when every
default model is cached (serve.sh only installs), cold when none is. The clock starts when
serve.sh starts, so it includes the venvs' pip installs (as far as this machine's pip cache and
find-links make them fast or slow) but not the clone. At the end the server's whole process group
is stopped, serve.sh's background build of the segmenter included (a cold run without
--wait-segment therefore leaves no training behind), and a default temp clone is removed.

Needs no torch: the standard library, plus Pillow and scikit-image for the photo when they are
importable (run it with .venv-train/bin/python to get scikit-image's cat).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.constants import ROOT

SEGMENTER = "shapes-maskrcnn-mobilenet_v2"
POLL_S = 0.5


def clone(rev: str, repo: Path) -> str:
    """A fresh clone of ROOT at rev (detached) in repo; returns the commit."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        ["git", "clone", "--quiet", "--local", "--no-checkout", str(ROOT), str(repo)], check=True
    )
    subprocess.run(["git", "-C", str(repo), "checkout", "--quiet", "--detach", sha], check=True)
    return sha


def cache_state(repo: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """(cold | partial | warm, the models needing a build), as serve.sh's own check sees it."""
    check = subprocess.run(
        [sys.executable, "-m", "scripts", "build-models", "--check", "--no-test-data"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if check.returncode not in (0, 3):
        raise RuntimeError(f"build-models --check failed: {check.stderr.strip()}")
    needs = [
        line.removeprefix("needs a build: ").split(" (")[0].strip()
        for line in check.stdout.splitlines()
        if line.startswith("needs a build: ")
    ]
    total = subprocess.run(
        [
            sys.executable,
            "-c",
            "from scripts.recipes.defaults import DEFAULTS; print(len(DEFAULTS))",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    state = "warm" if not needs else ("cold" if len(needs) == int(total) else "partial")
    return state, needs


def photo(repo: Path) -> tuple[bytes, str]:
    """A real JPEG: scikit-image's cat when Pillow and scikit-image are importable, else a
    generated one, else a photo committed in docs/."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        path = repo / "docs" / "playground-detect.jpg"
        return path.read_bytes(), str(path.relative_to(repo))
    try:
        import skimage.data

        image, what = Image.fromarray(skimage.data.chelsea()), "skimage.data.chelsea"
    except ImportError:
        image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
        ImageDraw.Draw(image).ellipse((160, 100, 480, 380), fill=(200, 120, 40))
        what = "generated 640x480"
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue(), what


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post_image(port: int, path: str, jpeg: bytes, timeout: float) -> int | None:
    """POST jpeg as the multipart field "image"; the status, or None when nothing answered."""
    boundary = "time-first-answer-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    body = head.encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):  # not listening yet, reset, timed out
        return None
    finally:
        conn.close()


def get_json(port: int, path: str) -> object:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server (INT: a graceful uvicorn shutdown), then the rest of its process group
    (TERM: serve.sh's background build ignores INT on purpose), then anything left (KILL)."""
    pgid = proc.pid  # start_new_session: serve.sh leads its own group, the server exec'd in it
    for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + grace
        while time.monotonic() < end:
            proc.poll()  # reap the leader, else it stays a zombie member of the group
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if sig == signal.SIGINT and proc.returncode is not None:
                break  # the server is down; on to the background build
            time.sleep(0.2)
    proc.poll()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        required=True,
        help="IIS_CACHE_DIR for the run: an empty folder is a fresh machine (cold), the real "
        "cache (~/.cache/image-inference-service) a warm one",
    )
    parser.add_argument("--repo", type=Path, help="where to clone (must not exist or be empty)")
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "time_first_answer.json")
    parser.add_argument("--wait-segment", action="store_true", help="also time /segment")
    parser.add_argument("--timeout", type=float, default=2400, help="give up after (s)")
    parser.add_argument("--keep-repo", action="store_true", help="keep a default temp clone")
    parser.add_argument(
        "--expect",
        choices=["cold", "partial", "warm"],
        help="stop before serve.sh starts unless the cache is in this state (--expect warm: "
        "never start a 15-minute training by mistake, e.g. when the cache was built from "
        "uncommitted code, which keys it differently from the clone)",
    )
    args = parser.parse_args(argv)

    temp_root = None
    if args.repo is None:
        temp_root = Path(tempfile.mkdtemp(prefix="iis-first-answer-"))
        args.repo = temp_root / "repo"
    elif args.repo.exists() and any(args.repo.iterdir()):
        parser.error(f"--repo {args.repo} is not empty: the point is a fresh clone")
    repo = args.repo.resolve()
    cache = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    serve_log = args.out.with_suffix(".serve.log")

    commit = clone(args.rev, repo)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "IIS_MODELS_DIR"}  # the clone's models/
    env.update(IIS_CACHE_DIR=str(cache), IIS_PORT=str(port), IIS_HOST="127.0.0.1")
    state, needs = cache_state(repo, env)
    if args.expect and state != args.expect:
        if temp_root is not None and not args.keep_repo:
            shutil.rmtree(temp_root, ignore_errors=True)
        print(f"cache {cache} is {state} for {commit[:10]} (to build: {needs}), not {args.expect}")
        return 2
    jpeg, what = photo(repo)
    result: dict[str, object] = {
        "seconds_to_first_classify": None,
        "cache": state,
        "needs_build": needs,
        "commit": commit,
        "repo": str(repo),
        "cache_dir": str(cache),
        "port": port,
        "photo": what,
        "serve_log": str(serve_log),
    }
    if args.wait_segment:
        result["seconds_to_segment_ready"] = None
    print(
        f"cache {state} ({len(needs)} to build), clone {commit[:10]} in {repo}, port {port}",
        flush=True,
    )

    with serve_log.open("wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["scripts/serve.sh"],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one at the end
        )
        try:
            targets = [("/classify", "seconds_to_first_classify")]
            if args.wait_segment:
                targets.append(("/segment?mask_format=rle", "seconds_to_segment_ready"))
            for path, key in targets:
                while True:
                    elapsed = time.monotonic() - t0
                    if proc.poll() is not None:
                        result["error"] = f"serve.sh exited ({proc.returncode}) before {path}"
                        break
                    if elapsed > args.timeout:
                        result["error"] = f"no 200 from {path} within {args.timeout:.0f} s"
                        break
                    if post_image(port, path, jpeg, timeout=30) == 200:
                        result[key] = round(time.monotonic() - t0, 1)
                        print(f"{path}: first 200 after {result[key]} s", flush=True)
                        break
                    time.sleep(POLL_S)
                if "error" in result:
                    break
                if key == "seconds_to_first_classify":
                    # what /readyz says meanwhile ("pending": what is still being built)
                    result["readyz_at_first_classify"] = get_json(port, "/readyz")
        finally:
            stop_group(proc)
    building_log = repo / "models" / ".segmenter-build.log"
    result["segmenter_built_in_background"] = building_log.exists()
    if building_log.exists():
        shutil.copy2(building_log, args.out.with_suffix(".segmenter-build.log"))
    if "error" in result:
        tail = serve_log.read_text(errors="replace").splitlines()[-30:]
        result["serve_log_tail"] = tail
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if temp_root is not None and not args.keep_repo:
        shutil.rmtree(temp_root, ignore_errors=True)
    return 1 if "error" in result else 0
