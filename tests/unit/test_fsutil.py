"""scripts/fsutil.py: the folder swap every build script uses, and the file hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scripts.fsutil import replace_dir, sha256_file, staged_dir


def test_staged_dir_replaces_the_folder_only_when_the_block_succeeds(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m"
    with staged_dir(final) as tmp:
        assert not final.exists() and tmp.parent == final.parent
        (tmp / "model.onnx").write_bytes(b"v1")
    assert (final / "model.onnx").read_bytes() == b"v1"

    with pytest.raises(KeyboardInterrupt), staged_dir(final) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C halfway: the old model stays, no temp folder is left
    assert (final / "model.onnx").read_bytes() == b"v1"
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]

    with staged_dir(final) as tmp:
        (tmp / "model.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["model.json"]  # replaced, not merged
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"]
    assert final.stat().st_mode & 0o777 == 0o755


def test_replace_dir_copies_a_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "stale.txt").write_text("old")
    replace_dir(src, tmp_path / "dst")
    assert [p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*")] == [
        "sub",
        "sub/a.txt",
    ]
    assert (src / "sub" / "a.txt").read_text() == "a"  # the source is left alone


def test_sha256_file_reads_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB: more than one chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
