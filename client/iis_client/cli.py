"""`iis`: call the service from a terminal (console script, see client/pyproject.toml).

    iis classify photo.jpg
    iis detect photos/ --csv > boxes.csv          # a folder: every image in it, with a progress bar
    iis segment photo.jpg --json --draw out/      # also save the photo with the masks drawn
    iis verify-faces a.jpg b.jpg
    iis models

Server and key: --url or IIS_URL (default http://127.0.0.1:8000), --api-key or IIS_API_KEY.
Exit status: 0 when every image got an answer, 1 when any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, get_args

import httpx2
from pydantic import BaseModel

from iis_client.client import DEFAULT_URL, ApiError, AsyncClient, Client, RetryPolicy
from iis_client.params import FaceMetric, MaskFormat, TilingMode
from iis_client.schemas import (
    ClassifyResponse,
    DetectResponse,
    SegmentResponse,
    VerifyFacesResponse,
)

try:  # the `cli` extra: tqdm, and Pillow + numpy for --draw
    from tqdm import tqdm

    from iis_client import annotate
except ModuleNotFoundError as missing:
    raise SystemExit(
        f"iis: {missing.name} is missing; the command needs the client's cli extra: "
        "pip install 'image-inference-client[cli]' (from a checkout: pip install './client[cli]')"
    ) from None

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
CSV_HEADERS = {
    "classify": ["file", "rank", "label", "class_id", "score"],
    "detect": ["file", "label", "class_id", "score", "x1", "y1", "x2", "y2"],
    "segment": ["file", "label", "class_id", "score", "x1", "y1", "x2", "y2", "area"],
    "verify-faces": ["file_a", "file_b", "verified", "distance", "similarity", "threshold",
                     "metric"],
}  # fmt: skip


@dataclass(frozen=True)
class Input:
    path: Path
    rel: Path  # where its drawing goes under --draw: relative to the folder it came from


def expand(paths: Sequence[Path]) -> list[Input]:
    """Files as given; folders -> every image below them, sorted."""
    found: list[Input] = []
    for path in paths:
        if path.is_dir():
            images = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += [Input(p, p.relative_to(path)) for p in images]
        elif path.is_file():
            found.append(Input(path, Path(path.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def summary(task: str, answer: BaseModel) -> str:
    """One human line per answer."""
    if isinstance(answer, ClassifyResponse):
        return " · ".join(f"{p.label} {p.score:.3f}" for p in answer.predictions)
    if isinstance(answer, DetectResponse):
        boxes = ", ".join(
            f"{d.label} {d.score:.2f} [{', '.join(str(round(v)) for v in d.box)}]"
            for d in answer.detections
        )
        return f"{len(answer.detections)} objects" + (f": {boxes}" if boxes else "")
    if isinstance(answer, SegmentResponse):
        found = ", ".join(f"{i.label} {i.score:.2f} ({i.area} px)" for i in answer.instances)
        return f"{len(answer.instances)} instances" + (f": {found}" if found else "")
    if isinstance(answer, VerifyFacesResponse):
        verdict = "same person" if answer.verified else "different people"
        sign = ">=" if answer.metric == "cosine" else "<="
        value = answer.similarity if answer.metric == "cosine" else answer.distance
        return (
            f"{verdict} ({answer.metric} {value:.3f}, same if {sign} {answer.threshold}; "
            f"distance {answer.distance:.3f}, similarity {answer.similarity:.3f})"
        )
    raise TypeError(f"no summary for {type(answer).__name__}")


def csv_rows(files: Sequence[str], answer: BaseModel) -> list[list[Any]]:
    if isinstance(answer, ClassifyResponse):
        return [
            [files[0], rank, p.label, p.class_id, p.score]
            for rank, p in enumerate(answer.predictions, 1)
        ]
    if isinstance(answer, DetectResponse):
        return [[files[0], d.label, d.class_id, d.score, *d.box] for d in answer.detections]
    if isinstance(answer, SegmentResponse):
        return [[files[0], i.label, i.class_id, i.score, *i.box, i.area] for i in answer.instances]
    if isinstance(answer, VerifyFacesResponse):
        a = answer
        return [[*files, a.verified, a.distance, a.similarity, a.threshold, a.metric]]
    raise TypeError(f"no CSV rows for {type(answer).__name__}")


class Output:
    """Writes answers as text lines (default), JSON lines (--json) or CSV (--csv)."""

    def __init__(self, task: str, fmt: str, out: TextIO) -> None:
        self.task, self.fmt, self.out = task, fmt, out
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_HEADERS[task])

    def write(self, files: Sequence[str], answer: BaseModel) -> None:
        if self.csv is not None:
            self.csv.writerows(csv_rows(files, answer))
        elif self.fmt == "json":
            key = {"file": files[0]} if len(files) == 1 else {"files": list(files)}
            self.out.write(json.dumps({**key, "result": answer.model_dump(mode="json")}) + "\n")
        else:
            self.out.write(f"{' vs '.join(files)}: {summary(self.task, answer)}\n")
        self.out.flush()


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"api_key": args.api_key, "timeout": args.timeout, "retry": RetryPolicy(args.retries)}


def draw_to(out_dir: Path, item: Input, task: str, answer: BaseModel) -> Path:
    img = annotate.open_photo(item.path)
    if isinstance(answer, ClassifyResponse):
        img = annotate.draw_classify(img, answer)
    elif isinstance(answer, DetectResponse):
        img = annotate.draw_detect(img, answer)
    elif isinstance(answer, SegmentResponse):
        img = annotate.draw_segment(img, answer)
    suffix = ".png" if item.path.suffix.lower() == ".png" else ".jpg"
    target = out_dir / item.rel.with_suffix(suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    img.save(target, quality=90)
    return target


async def _call(client: AsyncClient, task: str, path: Path, args: argparse.Namespace) -> BaseModel:
    if task == "classify":
        return await client.classify(path, top_k=args.top_k, model=args.model)
    options: dict[str, Any] = {
        "score_threshold": args.score_threshold,
        "iou_threshold": args.iou_threshold,
        "max_detections": args.max_detections,
        "classes": args.classes.split(",") if args.classes else None,
        "tiling": args.tiling,
        "tile_size": args.tile_size,
        "tile_overlap": args.tile_overlap,
        "max_tiles": args.max_tiles,
        "model": args.model,
    }
    if task == "detect":
        return await client.detect(path, **options)
    return await client.segment(
        path, mask_threshold=args.mask_threshold, mask_format=args.mask_format, **options
    )


async def run_images(task: str, args: argparse.Namespace) -> int:
    """Every image through one endpoint, `--concurrency` at a time (the server batches them);
    answers are written in input order as they come in."""
    items = expand(args.paths)
    if not items:
        print("no images found", file=sys.stderr)
        return 1
    output = Output(task, args.format, sys.stdout)
    limit = asyncio.Semaphore(args.concurrency)
    failures = 0

    async with AsyncClient(args.url, **_client_options(args)) as client:

        async def one(index: int) -> tuple[int, BaseModel | Exception]:
            async with limit:
                try:
                    return index, await _call(client, task, items[index].path, args)
                except (ApiError, OSError) as exc:
                    return index, exc

        pending = [asyncio.create_task(one(i)) for i in range(len(items))]
        bar = tqdm(
            total=len(items), unit="image", file=sys.stderr, disable=args.quiet or len(items) < 2
        )
        ready: dict[int, BaseModel | Exception] = {}
        written = 0
        try:
            for next_done in asyncio.as_completed(pending):
                index, result = await next_done
                bar.update(1)
                ready[index] = result
                while written in ready:
                    item, result = items[written], ready.pop(written)
                    written += 1
                    if isinstance(result, Exception):
                        failures += 1
                        bar.write(f"{item.path}: {result}", file=sys.stderr)
                        continue
                    output.write([str(item.path)], result)
                    if args.draw:
                        await asyncio.to_thread(draw_to, args.draw, item, task, result)
        finally:
            bar.close()
            for task_ in pending:  # on an early exit (server gone, closed pipe): stop the rest
                task_.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    if failures:
        print(f"{failures} of {len(items)} images failed", file=sys.stderr)
    return 1 if failures else 0


def run_verify(args: argparse.Namespace) -> int:
    with Client(args.url, **_client_options(args)) as client:
        answer = client.verify_faces(
            args.a, args.b, threshold=args.threshold, metric=args.metric,
            model=args.model, detector=args.detector,
        )  # fmt: skip
    Output("verify-faces", args.format, sys.stdout).write([str(args.a), str(args.b)], answer)
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
        a, b = annotate.open_photo(args.a), annotate.open_photo(args.b)
        target = args.draw / f"{args.a.stem}_vs_{args.b.stem}.jpg"
        annotate.draw_faces(a, b, answer).save(target, quality=90)
    return 0


def run_models(args: argparse.Namespace) -> int:
    with Client(args.url, **_client_options(args)) as client:
        listing = client.models()
    if args.format == "json":
        print(listing.model_dump_json(indent=2))
        return 0
    for m in listing.models:
        card, providers = m["card"], m["providers"]["active"]
        default = " (default)" if listing.defaults.get(card["task"]) == card["name"] else ""
        print(f"{card['task']:<12} {card['name']}{default}  [{', '.join(providers)}]")
    for name, why in listing.failed.items():
        print(f"{'FAILED':<12} {name}: {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("IIS_URL", DEFAULT_URL))
    common.add_argument("--api-key", default=os.environ.get("IIS_API_KEY"))
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    common.add_argument("--retries", type=int, default=3, help="on 429/503 and refused connections")
    fmt = common.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json",
                     help="one JSON object per line")  # fmt: skip
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv")
    common.set_defaults(format="text")

    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("paths", nargs="+", type=Path, help="image files and/or folders")
    images.add_argument("--draw", type=Path, metavar="DIR", help="save annotated images here")
    images.add_argument("--model")
    images.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    images.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    boxes = argparse.ArgumentParser(add_help=False)
    boxes.add_argument("--score-threshold", type=float)
    boxes.add_argument("--iou-threshold", type=float)
    boxes.add_argument("--max-detections", type=int)
    boxes.add_argument("--classes", help="comma list of labels or class ids")
    boxes.add_argument(
        "--tiling", choices=get_args(TilingMode), help="also run overlapping tiles (small objects)"
    )
    boxes.add_argument("--tile-size", type=int, help="tile side in photo pixels")
    boxes.add_argument("--tile-overlap", type=float, help="fraction of a tile shared, 0..0.75")
    boxes.add_argument("--max-tiles", type=int, help="most tiles per photo, 1..32")

    parser = argparse.ArgumentParser(
        prog="iis",
        description="Call the image inference service from a terminal.",
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cls = sub.add_parser("classify", parents=[common, images], help="top-k labels")
    cls.add_argument("--top-k", type=int)
    sub.add_parser("detect", parents=[common, images, boxes], help="labelled boxes")
    seg = sub.add_parser("segment", parents=[common, images, boxes], help="instance masks")
    seg.add_argument("--mask-threshold", type=float)
    seg.add_argument("--mask-format", choices=get_args(MaskFormat))
    ver = sub.add_parser("verify-faces", parents=[common], help="same person in two photos?")
    ver.add_argument("a", type=Path)
    ver.add_argument("b", type=Path)
    ver.add_argument("--threshold", type=float)
    ver.add_argument("--metric", choices=get_args(FaceMetric))
    ver.add_argument("--model")
    ver.add_argument("--detector")
    ver.add_argument("--draw", type=Path, metavar="DIR", help="save both photos annotated")
    sub.add_parser("models", parents=[common], help="the models the server has loaded")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify-faces":
            return run_verify(args)
        if args.command == "models":
            return run_models(args)
        return asyncio.run(run_images(args.command, args))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except httpx2.TransportError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except BrokenPipeError:  # `iis ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
