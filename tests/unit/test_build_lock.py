"""build-models' build lock: processes sharing the cache (serve.sh's background build
of the segmenter, test.sh, a second serve.sh) never build one model twice at once, and a build
that fails or is stopped leaves neither the cache nor models/ holding half a model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import scripts.recipes.build_models as bm
import scripts.recipes.defaults as defaults

NAME = "fake-model"


@dataclass
class Fake:
    """The fake model's build: blocks until `gate` is set; counts its runs."""

    started: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    builds: int = 0
    fail: bool = False


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    """DEFAULTS = one fake model (no weights); CACHE in tmp_path."""
    monkeypatch.setattr(bm, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(defaults, "CACHE", tmp_path / "cache")
    state = Fake()

    def build(out_dir: Path, weights: list[Path]) -> None:
        state.builds += 1
        state.started.set()
        assert state.gate.wait(10)
        (out_dir / NAME).mkdir()
        (out_dir / NAME / "model.onnx").write_bytes(b"onnx")
        if state.fail:
            raise RuntimeError("training diverged")

    monkeypatch.setattr(bm, "DEFAULTS", [bm.DefaultModel(name=NAME, build=build)])
    return state


def run_main(args: list[str]) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["rc"] = bm.main(args)
        except BaseException as exc:  # reported to the test
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def args_for(out: Path, *extra: str) -> list[str]:
    return ["--only", NAME, "--out", str(out), "--no-test-data", *extra]


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_second_build_waits_for_the_first_then_installs_from_the_cache(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, first_box = run_main(args_for(tmp_path / "a"))
    assert fake.started.wait(10)
    # another checkout (other --out): waits even with --skip-if-building, since nobody else
    # would install the model into its folder
    second, second_box = run_main(args_for(tmp_path / "b", "--skip-if-building"))
    time.sleep(0.5)
    assert second.is_alive() and not (tmp_path / "b" / NAME).exists()
    fake.gate.set()
    first.join(10)
    second.join(10)
    assert first_box == {"rc": 0} and second_box == {"rc": 0}
    assert fake.builds == 1
    for out in ("a", "b"):
        assert (tmp_path / out / NAME / "model.onnx").read_bytes() == b"onnx"
    printed = capsys.readouterr().out
    assert f"waiting for pid {os.getpid()}" in printed
    assert "built meanwhile by another process" in printed


def test_skip_if_building_leaves_the_model_to_the_build_into_the_same_folder(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models"
    first, first_box = run_main(args_for(out))
    assert fake.started.wait(10)
    # serve.sh run again in the same checkout: returns at once, installs nothing
    assert bm.main(args_for(out, "--skip-if-building")) == 0
    assert not (out / NAME).exists()
    assert f"already being built by pid {os.getpid()}" in capsys.readouterr().out
    fake.gate.set()
    first.join(10)
    assert first_box == {"rc": 0} and fake.builds == 1
    assert (out / NAME / "model.onnx").is_file()  # the first build installed it


def test_a_failed_build_leaves_no_model_no_staging_and_no_lock(fake: Fake, tmp_path: Path) -> None:
    fake.fail = True
    fake.gate.set()
    out = tmp_path / "models"
    with pytest.raises(RuntimeError, match="diverged"):
        bm.main(args_for(out))
    assert not (out / NAME).exists()
    assert not bm.DEFAULTS[0].cached().exists()
    assert sorted(p.name for p in bm.CACHE.iterdir()) == ["locks"]  # the staging folder is gone
    lock = bm.BuildLock(NAME)
    assert lock.acquire(block=False)
    lock.release()
    assert bm.main(["--check", "--no-test-data"]) == 3  # still "a build is needed"


def test_only_rejects_a_name_that_is_not_a_default(fake: Fake) -> None:
    with pytest.raises(SystemExit) as exc:
        bm.main(["--only", "no-such-model", "--no-test-data"])
    assert exc.value.code == 2


def test_kill_of_a_background_build_removes_its_staging_folder(tmp_path: Path) -> None:
    """`kill <pid>` (TERM) of serve.sh's background build, as run by `python build_models.py`:
    the build unwinds, so the cache, models/ and CACHE keep nothing of it."""
    module = tmp_path / "slow_fake.py"
    module.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path

            def build(out_dir: Path, weights: list) -> None:
                (out_dir / "{NAME}").mkdir()
                (out_dir / "{NAME}" / "half.bin").write_bytes(b"x")
                Path({str(tmp_path / "started")!r}).touch()
                time.sleep(60)
            """
        )
    )
    runner = textwrap.dedent(
        f"""
        import sys
        import scripts.recipes.build_models as bm
        import slow_fake
        bm.DEFAULTS[:] = [bm.DefaultModel(name={NAME!r}, build=slow_fake.build)]
        sys.argv = ["build_models.py", "--only", {NAME!r}, "--no-test-data",
                    "--out", {str(tmp_path / "models")!r}]
        # as `python -m scripts build-models` does, without re-importing the module
        sys.exit(bm.cli())
        """
    )
    cache = tmp_path / "cache"
    # slow_fake is importable through PYTHONPATH; `scripts` through the cwd (the checkout)
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "IIS_CACHE_DIR": str(cache), "PYTHONPATH": pythonpath}
    root = Path(bm.__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=root, env=env)
    try:
        wait_for(lambda: (tmp_path / "started").exists() or proc.poll() is not None, 30)
        assert proc.poll() is None
        assert any(p.name.startswith("build-") for p in cache.iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in cache.iterdir()) == ["locks"]
    assert not (tmp_path / "models").exists()
