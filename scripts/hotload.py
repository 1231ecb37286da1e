"""Hot-load a model folder the offline tools just wrote into a running service.

The service speaks the Open Inference Protocol repository extension (Triton / KServe):
`POST {url}/v2/repository/models/{name}/load`.

- With files (the default of `--load-into URL`), the body is Triton's load request:
  `{"parameters": {"config": <model.json text>, "file:model.onnx": <base64>,
  "file:golden.npz": <base64>}}` (golden only where the folder has one). The server writes
  exactly those files as models/<name>/ and loads them, so this works against a remote server.
- Without files (`--load-by-name`), the request has no body: the server reloads <name> from its
  own models directory (IIS_MODELS_DIR), which must already hold the folder.

`load_command` is the same call as one bash line (curl; with files, an inline python3 builds the
body from the folder as it is on disk when pasted). `hot_load` makes the call with httpx2 and
raises `HotLoadError` carrying the server's own message on anything but a 2xx, or before sending
anything when the body would exceed the server's upload limit. `add_arguments` and
`after_export` are the whole CLI wiring: an exporter adds the flags, and after writing a folder
prints the call and makes it when `--load-into` was given.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
from pathlib import Path
from urllib.parse import quote

import httpx2

from iis_client.client import DEFAULT_URL  # the iis command's default; IIS_URL overrides it
from service.cards import CARD_FILE, GOLDEN_FILE, ONNX_FILE

# The service's default IIS_MAX_UPLOAD_BYTES (service/settings.py). Read from the environment at
# call time so that whoever raised it on their server can raise it here the same way.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# The files a load request carries besides the card, in the order they are sent.
FILES = (ONNX_FILE, GOLDEN_FILE)


class HotLoadError(RuntimeError):
    """The load was refused (by the server, or here before sending), or the server was not
    reached. The message is a sentence for the person running the tool."""


def load_url(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/v2/repository/models/{quote(name, safe='')}/load"


def upload_limit() -> int:
    return int(os.environ.get("IIS_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))


def load_command(
    url: str, name: str, folder: Path, send_files: bool, *, with_api_key: bool = False
) -> str:
    """One bash line making the same request as `hot_load`. with_api_key adds the header from
    $IIS_API_KEY, so the key itself is never printed."""
    curl = ["curl", "-fsS", "-X", "POST"]
    key = ' -H "X-API-Key: $IIS_API_KEY"' if with_api_key else ""
    target = shlex.quote(load_url(url, name))
    if not send_files:
        return f"{shlex.join(curl)}{key} {target}"
    # The body is built when the line runs, from the folder as it is then; the folder is an
    # argument of the program, never part of its code, so no path can break the quoting. It goes
    # through a temporary file rather than a pipe: if python3 failed, a pipe would hand curl an
    # empty body, which the server takes as "reload by name", and answer 200 for the wrong model.
    program = (
        "import base64,json,pathlib,sys; d=pathlib.Path(sys.argv[1]); "
        f'p={{"config": (d/"{CARD_FILE}").read_bytes().decode("utf-8")}}; '
        'p.update({"file:"+f: base64.b64encode((d/f).read_bytes()).decode() '
        f"for f in {json.dumps(list(FILES))} if (d/f).is_file()}}); "
        'json.dump({"parameters": p}, sys.stdout)'
    )
    headers = shlex.join(["-H", "Content-Type: application/json"])
    return (
        "(f=$(mktemp) && trap 'rm -f \"$f\"' EXIT && "
        f'python3 -c {shlex.quote(program)} {shlex.quote(str(folder.resolve()))} > "$f" && '
        f'{shlex.join(curl)} {headers} --data-binary @"$f"{key} {target})'
    )


def _too_large(name: str, folder: Path, body_bytes: int, limit: int) -> HotLoadError:
    return HotLoadError(
        f"the load request for {name!r} would be {body_bytes / 2**20:.1f} MiB (the files of "
        f"{folder}, base64-encoded), over the server's upload limit of {limit / 2**20:.1f} MiB "
        f"(IIS_MAX_UPLOAD_BYTES on the server, default {DEFAULT_MAX_UPLOAD_BYTES // 2**20} MiB; "
        "set the same variable here if the server's is higher). Copy the folder into the "
        f"server's models directory (IIS_MODELS_DIR, default models/) as {name}/ and run again "
        "with --load-by-name"
    )


def body_estimate(folder: Path) -> int:
    """Bytes of the load request for folder, less the few of JSON syntax and escaping."""
    sizes = [(folder / f).stat().st_size for f in FILES if (folder / f).is_file()]
    card = folder / CARD_FILE
    return (card.stat().st_size if card.is_file() else 0) + sum(4 * -(-n // 3) for n in sizes)


def load_body(name: str, folder: Path, limit: int) -> bytes:
    """Triton's load request for the folder, as JSON bytes; HotLoadError before any file is read
    when it cannot fit in `limit` bytes."""
    card = folder / CARD_FILE
    files = [f for f in FILES if (folder / f).is_file()]
    if not card.is_file() or ONNX_FILE not in files:
        raise HotLoadError(f"{folder} is not a model folder: it needs {CARD_FILE} and {ONNX_FILE}")
    # from the sizes on disk first, so that a 500 MB model fails at once instead of after being
    # read and encoded
    estimate = body_estimate(folder)
    if estimate > limit:
        raise _too_large(name, folder, estimate, limit)
    # bytes decoded, not read_text: text mode would turn the card's \r\n into \n
    parameters = {"config": card.read_bytes().decode("utf-8")}
    for f in files:
        parameters[f"file:{f}"] = base64.b64encode((folder / f).read_bytes()).decode("ascii")
    body = json.dumps({"parameters": parameters}).encode("utf-8")
    if len(body) > limit:  # the card's JSON escaping can still tip it over
        raise _too_large(name, folder, len(body), limit)
    return body


def _server_message(response: httpx2.Response) -> str:
    text = response.text
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        error = None
    if isinstance(error, str) and error:
        return error
    return text.strip()[:500] or "(empty body)"


def hot_load(
    url: str,
    name: str,
    folder: Path,
    *,
    api_key: str | None = None,
    send_files: bool = True,
    timeout: float = 300.0,
    max_bytes: int | None = None,
) -> None:
    """POST the load request (see the module docstring). timeout is long because the server
    answers only once the model has loaded and passed its golden check."""
    headers = {"X-API-Key": api_key} if api_key else {}
    body = b""
    if send_files:
        body = load_body(name, folder, upload_limit() if max_bytes is None else max_bytes)
        headers["Content-Type"] = "application/json"
    target = load_url(url, name)
    try:
        response = httpx2.post(target, content=body, headers=headers, timeout=timeout)
    except httpx2.HTTPError as exc:
        raise HotLoadError(f"could not reach {target}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise HotLoadError(
            f"the server refused to load {name!r} (HTTP {response.status_code} from {target}): "
            f"{_server_message(response)}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hot-loading into a running service")
    g.add_argument(
        "--load-into",
        metavar="URL",
        help="after writing the model folder, load it into the service at URL (its files are "
        "uploaded, so the server may be remote)",
    )
    g.add_argument(
        "--load-by-name",
        action="store_true",
        help="only ask the server to reload the model from its own models directory "
        "(IIS_MODELS_DIR), which must already hold this folder: for folders too large to upload",
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("IIS_API_KEY"),
        help="admin API key for --load-into (default: $IIS_API_KEY)",
    )


def after_export(args: argparse.Namespace, name: str, folder: Path) -> None:
    """Print the call that hot-loads `folder` as `name`; make it when --load-into was given.
    A refused load exits with the server's message (the folder itself is written either way)."""
    url = args.load_into or os.environ.get("IIS_URL", DEFAULT_URL)
    send_files = not args.load_by_name
    note = ""
    if send_files and body_estimate(folder) > upload_limit():
        send_files = False
        note = (
            f"  # {folder} is too large to upload (IIS_MAX_UPLOAD_BYTES): copy it into the "
            "server's models directory first\n"
        )
    if args.api_key and os.environ.get("IIS_API_KEY") != args.api_key:
        note += "  # export IIS_API_KEY=<admin key> first\n"
    command = load_command(url, name, folder, send_files, with_api_key=bool(args.api_key))
    print(f"hot-load {name} into a running service:\n{note}  {command}")
    if args.load_into:
        try:
            hot_load(url, name, folder, api_key=args.api_key, send_files=not args.load_by_name)
        except HotLoadError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"loaded {name} into {args.load_into}")
