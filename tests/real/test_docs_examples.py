"""Every shell and Python example in README.md and docs/ runs against a live server.

The rules (docs/development.md, "The examples are tests", says the same to readers):
- A fenced block tagged `bash`, `sh`, `console` or `python` is an example; `json`, `text` and
  the other tags are answers and listings. A fence without a tag is refused: say which it is.
- An example whose first line is `# not run by the tests: <why>` is not run; the reader sees why.
- Every other example runs, in document order (README first, then docs/ by path), against one
  server over the default models, in one scratch folder that holds the photos the docs name
  (PHOTOS below). `localhost:8000` and `127.0.0.1:8000` in an example become the live server's
  address, and `IIS_URL` points the `iis` CLI at it.
- `bash`/`sh` run under `bash -e -o pipefail`; in a `console` block the `$ ` lines are the
  commands and the other lines their documented output; `python` runs with the project
  importable. An example passes when it exits 0 and its documented answer (the `json` block
  right after a `bash` block, or a `console` block's output lines) matches what it printed:
  every JSON key the answer shows is in the output, and so is every `code`, `label`, `model`
  and `verified` value it shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.app import ROOT, start_server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "sh", "console", "python"}
MARKER = re.compile(r"^#\s*not run by the tests:\s*(\S.*)$")
ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
FENCE = re.compile(r"^(\s*)```(.*)$")
JSON_KEY = re.compile(r'"([A-Za-z_][\w-]*)"\s*:')
# values that do not change from run to run: what the model said, and which error
CHECKED_VALUE = re.compile(r'"(code|label|model|verified)"\s*:\s*("[^"]*"|true|false)')
# photo names used in the docs -> where the test takes them from ("testdata": the photos
# python -m scripts build-models fetches; "chelsea"/"coffee": scikit-image; "shapes": generated)
PHOTOS = {
    "cat.jpg": "chelsea",
    "coffee.jpg": "coffee",
    "shapes.jpg": "shapes",
    "photos/shapes.jpg": "shapes",
    **{name: "testdata" for name in ("dog.jpg", "kite.jpg", "giraffe.jpg", "biden.jpg")},
    **{name: "testdata" for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "photos/dog.jpg")},
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    answer: str  # the documented output: the json block after it, or a console block's output

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def reason_not_run(self) -> str | None:
        first = self.code.lstrip("\n").split("\n", 1)[0]
        match = MARKER.match(first)
        return match.group(1) if match else None


def fences(page: Path) -> list[tuple[int, str, str]]:
    """(line of the opening fence, tag, body) of every fenced block of a Markdown page."""
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, tag = opening.group(1), opening.group(2).strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        found.append((i + 1, tag, body))
        i = end + 1
    return found


def blocks(page: Path) -> list[Block]:
    text_lines = page.read_text(encoding="utf-8").splitlines()
    raw = fences(page)
    out = []
    for k, (line, tag, body) in enumerate(raw):
        lang = tag.split()[0] if tag else ""
        if lang not in RUNNABLE:
            continue
        answer = ""
        if lang == "console":
            answer = "\n".join(ln for ln in body.splitlines() if not ln.startswith("$ "))
        elif k + 1 < len(raw) and raw[k + 1][1] == "json":
            closing = line + body.count("\n") + 2  # the closing fence's line, 1-based
            if not any(s.strip() for s in text_lines[closing : raw[k + 1][0] - 1]):
                answer = raw[k + 1][2]
        out.append(Block(page, line, lang, body, answer))
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def test_every_fence_says_what_it_holds():
    untagged = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES for n, tag, _ in fences(p) if not tag]
    assert not untagged, (
        f"fenced blocks without a language (bash, console, json, text, ...): {untagged}"
    )


def test_examples_are_found():
    """A parser that finds nothing would pass every example: there are dozens, most of them run."""
    run = [b for b in ALL if b.reason_not_run is None]
    assert len(ALL) >= 40 and len(run) >= 25, (len(ALL), len(run))
    assert {b.lang for b in run} >= {"bash", "console", "python"}


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for command in ("scripts/serve.sh", "scripts/test.sh"):
        assert command in readme
    # relative links and images must resolve from the repository root (the site checks docs/)
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)|src=\"([^\"]+)\"", readme):
        path = next(t for t in target if t)
        if not re.match(r"[a-z]+:", path):
            assert (ROOT / path).exists(), f"README.md links to missing {path}"


@pytest.fixture(scope="module")
def live_url(default_models: Path) -> Iterator[str]:
    """`python -m service` over the default models on a free loopback port, galleries in a
    temp folder (start_server's), the model set fixed (`none`: no example may write into
    models/)."""
    yield from start_server(default_models, IIS_MODEL_CONTROL="none")


@pytest.fixture(scope="module")
def workdir(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every example runs in, holding the photos of PHOTOS under those names."""
    import skimage.data
    from PIL import Image

    from scripts.recipes.shapes import make_split, splits

    folder = tmp_path_factory.mktemp("examples")
    # shapes.jpg: as docs/api/rest.md says, val_00001.jpg of
    # `python -m scripts make-shapes --out DIR --train 0 --val 3 --seed 7`
    shapes_dir = tmp_path_factory.mktemp("shapes")
    make_split(shapes_dir, splits(train=0, val=3, seed=7)[1])
    sources = {
        "chelsea": lambda p: Image.fromarray(skimage.data.chelsea()).save(p),
        "coffee": lambda p: Image.fromarray(skimage.data.coffee()).save(p),
        "shapes": lambda p: shutil.copy(shapes_dir / "val" / "images" / "val_00001.jpg", p),
        "testdata": lambda p: shutil.copy(testdata / p.name, p),
    }
    for name, source in PHOTOS.items():
        (folder / name).parent.mkdir(exist_ok=True)
        sources[source](folder / name)
    shutil.copy(ROOT / "pyproject.toml", folder)  # the errors example uploads it as a "photo"
    return folder


def _command(block: Block) -> list[str]:
    if block.lang == "python":
        return [sys.executable, "-c", block.code]
    code = block.code
    if block.lang == "console":
        commands, lines = [], block.code.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                command = line[2:]
                j = i
                while command.endswith("\\") and j + 1 < len(lines):
                    j += 1
                    command = command[:-1] + " " + lines[j].strip()
                commands.append(command)
        code = "\n".join(commands)
    return ["bash", "-e", "-o", "pipefail", "-c", code]


def _mismatches(answer: str, printed: str) -> list[str]:
    """What the documented answer shows that the printed output lacks."""
    missing = [f'key "{k}"' for k in dict.fromkeys(JSON_KEY.findall(answer))
               if not re.search(rf'"{re.escape(k)}"\s*:', printed)]  # fmt: skip
    for key, value in dict.fromkeys(CHECKED_VALUE.findall(answer)):
        if not re.search(rf'"{key}"\s*:\s*{re.escape(value)}', printed):
            missing.append(f'"{key}": {value}')
    return missing


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=b.where, marks=pytest.mark.skip(reason=f"{b.where}: {why}"))
        if (why := b.reason_not_run)
        else pytest.param(b, id=b.where)
        for b in ALL
    ],
)
@pytest.mark.e2e
@pytest.mark.real_weights
def test_example(block: Block, live_url: str, workdir: Path):
    address = live_url.removeprefix("http://")
    code = ADDRESS.sub(address, block.code)
    env = os.environ | {
        "IIS_URL": live_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    env.pop("IIS_API_KEY", None)
    command = _command(Block(block.page, block.line, block.lang, code, block.answer))
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    printed = done.stdout + done.stderr
    context = f"{block.where}\n--- example ---\n{code}\n--- printed ---\n{printed[-4000:]}"
    assert done.returncode == 0, f"{block.where}: exit status {done.returncode}\n{context}"
    missing = _mismatches(block.answer, done.stdout)
    assert not missing, f"{block.where}: the documented answer shows {missing}\n{context}"
