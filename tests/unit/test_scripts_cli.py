"""`python -m scripts`: the one entry point lists every command, needs only the standard library
for its help and for the build check serve.sh runs before any install, and every command
reaches its own argument parser."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from scripts.__main__ import COMMANDS, main
from tests.support.app import ROOT


def test_help_lists_every_command_without_site_packages() -> None:
    # -S: no site-packages, so neither torch nor pydantic can be imported
    out = subprocess.run(
        [sys.executable, "-S", "-m", "scripts", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name, command in COMMANDS.items():
        assert name in out and command.help.split()[0] in out


def test_build_check_needs_only_the_standard_library(tmp_path) -> None:
    check = subprocess.run(
        [sys.executable, "-S", "-m", "scripts", "build-models", "--check", "--no-test-data"],
        cwd=ROOT,
        env={"IIS_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert check.returncode == 3, check.stderr  # an empty cache: every default needs a build
    assert "needs a build: shapes-maskrcnn-mobilenet_v2" in check.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_reaches_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, function = COMMANDS[name].target.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m scripts {name}")


def test_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["no-such-command"])
    assert exited.value.code == 2
    assert "build-models" in capsys.readouterr().err  # the error lists the choices


def test_the_docs_list_every_command() -> None:
    """docs/development.md's command table names exactly the entry point's commands."""
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert listed == set(COMMANDS)
