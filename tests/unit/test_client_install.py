"""The client distribution (client/) stands alone: its wheel holds only `iis_client`, what it
requires (with or without the `cli` extra) pulls in none of the server's heavy dependencies,
it imports nothing of the server's, and the server's own requirements no longer carry the
command's (tqdm). Offline: the wheel is built without build isolation or an index, and the
requirements are followed through the distributions installed here."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.app import ROOT

CLIENT = "image-inference-client"
SERVER_ONLY = {"onnxruntime", "onnxruntime-gpu", "fastapi", "uvicorn", "starlette", "torch",
               "torchvision", "sqlalchemy", "alembic", "psycopg", "prometheus-client"}  # fmt: skip
COMMAND_ONLY = {"tqdm"}  # the `iis` command's progress bars: not the server's business


def client_requirements(extras: set[str] = frozenset()) -> list[Requirement]:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull in, as installed here (markers evaluated
    for this interpreter); the client's own requirements are read from client/, not from
    whatever copy of it is installed."""
    todo = [(r, extra) for r in requirements for extra in {"", *r.extras}]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extra) in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add((name, extra))
        if name == CLIENT:
            subs = client_requirements(req.extras)
        else:
            subs = [Requirement(line) for line in metadata.distribution(name).requires or []]
            subs = [s for s in subs if s.marker is None or s.marker.evaluate({"extra": extra})]
            subs = [Requirement(str(s).split(";")[0]) for s in subs]  # its marker is met
        todo += [(s, e) for s in subs for e in {"", *s.extras}]
    return {name for name, _ in seen}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """client/ built into a wheel, offline, from a copy (the build writes beside the source)."""
    work = tmp_path_factory.mktemp("client-wheel")
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "client", work / "src", ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(work / "dist"), str(work / "src")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = (work / "dist").glob("image_inference_client-*.whl")
    return built


def test_the_wheel_holds_the_client_and_declares_light_requirements(wheel: Path):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        info = email.message_from_bytes(whl.read(meta))
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = whl.read(entry_points).decode()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"iis_client"}
    assert {"iis_client/py.typed", "iis_client/cli.py", "iis_client/schemas.py"} <= set(names)
    assert "iis = iis_client.cli:main" in scripts
    required = [Requirement(r) for r in info.get_all("Requires-Dist") or []]
    core = {canonicalize_name(r.name) for r in required if r.marker is None}
    cli = {canonicalize_name(r.name) for r in required if r.marker and "cli" in str(r.marker)}
    assert core == {"pydantic", "httpx2", "typing-extensions"}
    assert cli == {"tqdm", "pillow", "numpy"}


@pytest.mark.parametrize("extras", [set(), {"cli"}], ids=["core", "cli"])
def test_installing_the_client_brings_no_server_dependency(extras: set[str]):
    pulled = closure(client_requirements(extras))
    assert {"pydantic", "httpx2"} <= pulled
    assert not pulled & SERVER_ONLY, f"the client pulls in {sorted(pulled & SERVER_ONLY)}"


def test_the_server_needs_the_client_models_but_not_the_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    assert CLIENT in {canonicalize_name(r.name) for r in requirements}
    pulled = closure(requirements)
    assert not pulled & COMMAND_ONLY, f"the server pulls in {sorted(pulled & COMMAND_ONLY)}"
    assert "iis" not in project.get("scripts", {})  # the command is the client's


def test_the_client_imports_nothing_of_the_server(tmp_path: Path):
    """With the server's packages made unimportable, every client module still imports and
    the command still builds its parser."""
    blocked = ["service", "fastapi", "starlette", "uvicorn", "onnxruntime", "torch"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import raises ModuleNotFoundError\n"
        "import iis_client, iis_client.annotate, iis_client.cli, iis_client.masks\n"
        "iis_client.cli.build_parser().parse_args(['models'])\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT / "client"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
