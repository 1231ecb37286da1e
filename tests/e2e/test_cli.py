"""The `iis` console script: folders with a progress bar, --csv / --json, --draw, errors per
image, and every task over the default models."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iis_client.annotate import PALETTE
from iis_client.cli import main
from iis_client.client import Client
from iis_client.masks import decode_rle
from tests.support.app import start_server
from tests.support.images import encode, noise_image

SHAPES = {"circle", "square", "triangle", "star"}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/a.png, photos/sub/b.jpg, photos/c.png, a text file (skipped) and a .jpg that is
    not an image (answered 400)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(encode(noise_image(80, 60, seed=1), "PNG"))
    (folder / "sub" / "b.jpg").write_bytes(encode(noise_image(120, 90, seed=2), "JPEG"))
    (folder / "c.png").write_bytes(encode(noise_image(50, 70, seed=3), "PNG"))
    (folder / "notes.txt").write_text("not an image suffix: never sent")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


def iis(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_to_csv_with_progress_and_a_failed_image(tiny_server, photos, capsys):
    code, out, err = iis(capsys, "classify", str(photos), "--csv", "--top-k", "2",
                         "--url", tiny_server)  # fmt: skip
    assert code == 1  # one image failed; the others were still answered
    assert "broken.jpg: 400 invalid_image" in err and "1 of 4 images failed" in err
    assert "4/4" in err  # tqdm's progress bar on stderr
    rows = list(csv.DictReader(io.StringIO(out)))
    names = [Path(r["file"]).relative_to(photos).as_posix() for r in rows]
    assert names == ["a.png", "a.png", "c.png", "c.png", "sub/b.jpg", "sub/b.jpg"]
    with Client(tiny_server) as client:
        for name in ("a.png", "c.png", "sub/b.jpg"):
            expected = client.classify(photos / name, top_k=2).predictions
            got = [r for r in rows if r["file"] == str(photos / name)]
            assert [(r["rank"], r["label"], r["class_id"]) for r in got] == [
                (str(i), p.label, str(p.class_id)) for i, p in enumerate(expected, 1)
            ]
            assert [float(r["score"]) for r in got] == pytest.approx([p.score for p in expected])


def test_json_lines_and_drawings(tiny_server, photos, tmp_path, capsys):
    (photos / "broken.jpg").unlink()
    out_dir = tmp_path / "drawn"
    code, out, err = iis(capsys, "classify", str(photos), "--json", "--draw", str(out_dir),
                         "--url", tiny_server, "--concurrency", "2")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["a.png", "c.png", "b.jpg"]
    assert all(x["result"]["model"] == "tiny-cls" for x in lines)
    for name in ("a.png", "c.png", "sub/b.jpg"):
        with Image.open(photos / name) as src, Image.open(out_dir / name) as drawn:
            assert drawn.size == src.size
            # the label tags are painted over the photo's top-left corner
            corner = np.asarray(drawn.convert("RGB"))[:8, :8].astype(int)
            assert np.abs(corner - np.asarray(src.convert("RGB"))[:8, :8]).max() > 60


def test_unreachable_server_and_missing_files(photos, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    code, _, err = iis(capsys, "classify", str(photos / "a.png"), "--url",
                       f"http://127.0.0.1:{port}", "--retries", "0")  # fmt: skip
    assert code == 1 and f"cannot reach http://127.0.0.1:{port}" in err
    code, _, err = iis(capsys, "detect", str(photos / "missing.jpg"))
    assert code == 1 and "no such file or folder" in err
    with pytest.raises(SystemExit) as caught:
        main(["segment", "x.jpg", "--json", "--csv"])
    assert caught.value.code == 2


def test_installed_console_script(tiny_server, photos):
    script = Path(sys.executable).with_name("iis")
    assert script.exists(), "pip install -e ./client registers the `iis` console script"
    run = subprocess.run(
        [str(script), "classify", str(photos / "a.png"), "--top-k", "1", "--url", tiny_server],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{photos / 'a.png'}: ")
    assert run.stdout.strip().split(": ", 1)[1].split()[0] in {"apple", "banana", "cherry"}


# ---- over the default models ---------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(default_models: Path) -> Iterator[str]:
    yield from start_server(default_models)


@pytest.mark.real_weights
def test_detect_and_draw_real_photos(real_server, testdata, tmp_path, capsys):
    code, out, err = iis(capsys, "detect", str(testdata / "dog.jpg"), str(testdata / "eagle.jpg"),
                         "--json", "--draw", str(tmp_path), "--url", real_server)  # fmt: skip
    assert code == 0, err
    dog, eagle = (json.loads(line)["result"] for line in out.splitlines())
    assert {"dog", "bicycle", "car"} <= {d["label"] for d in dog["detections"]}
    assert "bird" in {d["label"] for d in eagle["detections"]}
    drawn = np.asarray(Image.open(tmp_path / "dog.jpg").convert("RGB")).astype(int)
    box = next(d for d in dog["detections"] if d["label"] == "dog")
    x1, y1, x2, y2 = (round(v) for v in box["box"])
    edge = drawn[(y1 + y2) // 2, x1]  # left edge, half-way down (JPEG: near the colour)
    assert np.abs(edge - PALETTE[box["class_id"] % len(PALETTE)]).max() < 40, edge


@pytest.mark.real_weights
def test_detect_with_tiles(real_server, testdata, capsys):
    code, out, err = iis(capsys, "detect", str(testdata / "kite.jpg"), "--json", "--tiling",
                         "on", "--tile-size", "320", "--max-tiles", "20",
                         "--url", real_server)  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)["result"]
    # 6 x 4 tiles of 320 px would pass the cap of 20: they grew to 360 px, 5 x 3
    assert answer["tiling"] == {"mode": "on", "tiles": 15, "tile_size": 360, "overlap": 0.25}
    assert "merge" in answer["timing_ms"]
    assert {"kite", "person"} <= {d["label"] for d in answer["detections"]}


@pytest.mark.real_weights
def test_segment_csv_and_overlay(real_server, tmp_path, capsys):
    from scripts.recipes.shapes import make_split, splits

    coco = json.loads(make_split(tmp_path / "data", splits(0, 2, seed=11)[1]).read_text())
    image = tmp_path / "data" / "val" / "images" / coco["images"][0]["file_name"]
    code, out, err = iis(capsys, "segment", str(image), "--csv", "--draw", str(tmp_path / "out"),
                         "--max-detections", "5", "--url", real_server)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and {r["label"] for r in rows} <= SHAPES
    with Client(real_server) as client:
        answer = client.segment(image, max_detections=5)
    assert [int(r["area"]) for r in rows] == [i.area for i in answer.instances]
    # inside the largest mask, away from its box, the drawing is half photo, half colour
    best = max(range(len(answer.instances)), key=lambda i: answer.instances[i].area)
    mask = decode_rle({"size": answer.instances[best].mask.size,
                       "counts": answer.instances[best].mask.counts})  # fmt: skip
    for later in answer.instances[best + 1 :]:
        mask &= ~decode_rle({"size": later.mask.size, "counts": later.mask.counts})
    inner = mask & np.roll(mask, 6, 0) & np.roll(mask, -6, 0) & np.roll(mask, 6, 1)
    inner &= np.roll(mask, -6, 1)
    assert inner.sum() > 50, "the largest mask should have an inside to sample"
    photo = np.asarray(Image.open(image).convert("RGB")).astype(float)
    drawn = np.asarray(Image.open(tmp_path / "out" / image.name).convert("RGB")).astype(float)
    expected = 0.5 * photo[inner] + 0.5 * np.asarray(PALETTE[best % len(PALETTE)])
    assert np.median(np.abs(drawn[inner] - expected)) < 12  # JPEG-saved drawing


@pytest.mark.real_weights
def test_verify_faces_text_csv_and_models(real_server, testdata, tmp_path, capsys):
    a, b, c = (str(testdata / n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg"))
    code, out, _ = iis(capsys, "verify-faces", a, b, "--url", real_server,
                       "--draw", str(tmp_path))  # fmt: skip
    assert code == 0 and out.startswith(f"{a} vs {b}: same person (cosine ")
    assert (tmp_path / "obama_vs_obama2.jpg").exists()
    code, out, _ = iis(capsys, "verify-faces", a, c, "--csv", "--url", real_server)
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["verified"] == "False" and float(row["similarity"]) < 0.363
    code, out, _ = iis(capsys, "models", "--url", real_server)
    assert code == 0
    assert "classify     mobilenet_v2-imagenet (default)" in out
    assert "segment      shapes-maskrcnn-mobilenet_v2 (default)" in out
