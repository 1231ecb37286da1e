"""Side-by-side serving benchmark: this service against raw onnxruntime, a naive FastAPI app and
LitServe, on the same model, the same photo and the same async client, in one run.

    python scripts/bench.py                       # classifier, ResNet-50 (random), detector
    python scripts/bench.py --models classifier --concurrency 1,16 --seconds 10
    python scripts/bench.py --models path/to/my-model-folder --out artifacts/bench-mine

Everything runs on loopback, bounded by --requests and --seconds per measurement. Each server
is started and stopped by this script, one at a time, with the same ONNX Runtime thread count:

  raw       in this process: decode + preprocess + session.run + postprocess, at batch 1
            (latency) and at the batch size that gives the most images/s (the ceiling)
  service   python -m service (this project), default settings, only the model under test
  naive     scripts/bench_apps/naive_app.py: FastAPI + one session, no batching, work inline
  litserve  scripts/bench_apps/litserve_app.py: LitServe with its batching on (same max
            batch and wait as the service)

The peers reuse the service's preprocess/postprocess code (bench_apps/pipeline.py), so the
comparison is of serving architecture and the hot path around the model. Writes bench.json,
bench.md (the table) and bench.png (the chart) into --out, prints the table and the targets.
Needs the `dev` extra (aiohttp, psutil, litserve, matplotlib) and, for the ResNet-50, torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import benchkit  # noqa: E402

STACKS = ("raw", "service", "naive", "litserve")
SERVERS = ("service", "naive", "litserve")
BUILT = {"classifier": "mobilenet_v2-imagenet", "detector": "yolov3-tiny-coco"}
RESNET50 = "resnet50-random"
BENCH_CACHE = Path.home() / ".cache" / "image-inference-service" / "bench"
TASK_PATH = {"classify": "/classify", "detect": "/detect"}


# ---------------------------------------------------------------------------- models


def resolve_model(key: str, models_dir: Path) -> Path:
    """classifier | detector | resnet50 | a model folder -> the folder (model.onnx + card)."""
    if key in BUILT:
        folder = models_dir / BUILT[key]
        if not (folder / "model.onnx").is_file():
            raise SystemExit(f"{folder} is missing: run python scripts/build_models.py")
        return folder
    if key == "resnet50":
        folder = BENCH_CACHE / RESNET50
        if not (folder / "model.onnx").is_file():
            print(f"exporting a random-weight ResNet-50 to {folder} (timing only)", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "export.py"),
                    "classify",
                    "--arch",
                    "resnet50",
                    "--random",
                    "--name",
                    RESNET50,
                    "--out",
                    str(BENCH_CACHE),
                ],
                check=True,
            )
        return folder
    folder = Path(key)
    if not (folder / "model.json").is_file():
        raise SystemExit(
            f"--models: {key!r} is neither classifier/resnet50/detector nor a model folder"
        )
    return folder


def staged_models_dir(folder: Path, tmp: Path) -> Path:
    """A models dir holding only `folder` (a symlink), so the service loads just that model."""
    staged = tmp / f"models-{folder.name}"
    staged.mkdir(exist_ok=True)
    link = staged / folder.name
    if not link.exists():
        link.symlink_to(folder.resolve(), target_is_directory=True)
    return staged


# ---------------------------------------------------------------------------- raw ceiling


def raw_ceiling(
    folder: Path, photo: bytes, threads: int, seconds: float, batches: list[int]
) -> dict[str, Any]:
    """In-process onnxruntime with the service's own decode, preprocess and postprocess."""
    from scripts.bench_apps.pipeline import Pipeline
    from service.images import decode
    from service.routes.common import needed_side

    pipe = Pipeline.load(folder, threads)
    side = needed_side(pipe.card)

    def step(n: int) -> None:
        images = [decode(photo, max_pixels=40_000_000, min_side=side) for _ in range(n)]
        tensor, geometries = pipe.prepare(images)
        pipe.answer(pipe.run(tensor), geometries)

    for n in (1, max(batches)):  # warm-up, both shapes
        step(n)
    latencies = []
    stop_at = time.perf_counter() + seconds
    while len(latencies) < 30 or (time.perf_counter() < stop_at and len(latencies) < 500):
        t0 = time.perf_counter()
        step(1)
        latencies.append((time.perf_counter() - t0) * 1000)
    per_batch: dict[str, float] = {}
    for n in batches:
        step(n)
        rates = []
        stop_at = time.perf_counter() + seconds / len(batches)
        while len(rates) < 3 or time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            step(n)
            rates.append(n / (time.perf_counter() - t0))
        per_batch[str(n)] = round(statistics.median(rates), 2)
    best = max(per_batch, key=lambda k: per_batch[k])
    return {
        "batch1_latency_ms": benchkit.summary(latencies),
        "batch1_throughput_rps": round(1000 / statistics.median(latencies), 2),
        "throughput_by_batch_rps": per_batch,
        "best_batch": int(best),
        "best_throughput_rps": per_batch[best],
    }


# ---------------------------------------------------------------------------- servers


def start(
    stack: str, folder: Path, port: int, args: argparse.Namespace, tmp: Path
) -> AbstractContextManager[benchkit.Server]:
    threads = str(args.threads)
    log = tmp / f"{stack}-{folder.name}.log"
    if stack == "service":
        env = benchkit.service_env(
            staged_models_dir(folder, tmp),
            port,
            args.threads,
            iis_default_models=folder.name,
            iis_max_batch=str(args.max_batch),
            iis_max_wait_ms=str(args.max_wait_ms),
            **dict(kv.split("=", 1) for kv in args.service_env),
        )
        return benchkit.serve(
            benchkit.service_argv(), port=port, ready_path="/readyz", env=env, log=log
        )
    common = {
        "BENCH_MODEL_DIR": str(folder.resolve()),
        "BENCH_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "PYTHONPATH": str(ROOT),
    }
    if stack == "naive":
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "scripts.bench_apps.naive_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        return benchkit.serve(argv, port=port, ready_path="/health", env=common, log=log)
    if stack == "litserve":
        env = common | {
            "BENCH_PORT": str(port),
            "BENCH_MAX_BATCH": str(args.max_batch),
            "BENCH_BATCH_TIMEOUT": str(args.max_wait_ms / 1000),
        }
        argv = [sys.executable, str(ROOT / "scripts" / "bench_apps" / "litserve_app.py")]
        return benchkit.serve(argv, port=port, ready_path="/health", env=env, log=log)
    raise ValueError(stack)


def sender(stack: str, url: str, task: str, name: str, photo: bytes) -> benchkit.Send:
    if stack == "service":
        return benchkit.multipart_sender(
            f"{url}{TASK_PATH[task]}?model={name}", "image", "photo.jpg", photo
        )
    if stack == "naive":
        return benchkit.multipart_sender(f"{url}/predict", "image", "photo.jpg", photo)
    return benchkit.json_image_sender(f"{url}/predict", photo)


def answer_of(task: str, body: Any) -> str:
    """A short fingerprint of an answer, to check every stack says the same thing."""
    if body is None:
        return "-"
    if task == "classify":
        return str(body["predictions"][0]["label"])
    labels = sorted(d["label"] for d in body["detections"])
    return ",".join(labels)


def bench_server(
    stack: str, folder: Path, task: str, photo: bytes, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    port = benchkit.free_port()
    out: dict[str, Any] = {"levels": {}}
    with start(stack, folder, port, args, tmp) as server:
        send = sender(stack, server.url, task, folder.name, photo)
        warm = asyncio.run(
            benchkit.drive(
                send,
                concurrency=max(args.concurrency),
                requests=4 * max(args.concurrency),
                seconds=60,
                warmup=0,
            )
        )
        out["answer"] = answer_of(task, warm.first_body)
        out["rss_mb_after_warmup"] = round(server.rss_mb(), 1)
        for c in args.concurrency:
            r = asyncio.run(
                benchkit.drive(
                    send, concurrency=c, requests=args.requests, seconds=args.seconds, warmup=2 * c
                )
            )
            out["levels"][str(c)] = r.to_json()
            lat = r.to_json()["latency_ms"]
            print(
                f"  {stack:9s} c={c:<3d} {r.throughput:8.1f} req/s  p50 {lat['p50']:8.2f} ms"
                f"  p99 {lat['p99']:8.2f} ms  ({r.ok} ok, {sum(r.statuses.values()) - r.ok} not)",
                flush=True,
            )
        out["rss_mb_after_run"] = round(server.rss_mb(), 1)
    return out


# ---------------------------------------------------------------------------- report


def check_targets(
    model: dict[str, Any], concurrency: list[int], classifier: bool
) -> list[dict[str, Any]]:
    """The issue's targets, each with the figures it was judged on."""
    checks: list[dict[str, Any]] = []
    s = model["stacks"]
    top = str(max(concurrency))
    if "service" not in s:
        return checks
    svc = s["service"]["levels"].get(top, {}).get("throughput_rps")
    for peer, ratio in (("naive", 1.3), ("litserve", 1.2)):
        if peer in s and svc is not None:
            other = s[peer]["levels"][top]["throughput_rps"]
            checks.append(
                {
                    "target": f"c={top}: service >= {ratio}x {peer} throughput",
                    "measured": round(svc / other, 2) if other else None,
                    "holds": bool(other) and svc / other >= ratio,
                }
            )
    if "raw" in s and svc is not None and classifier:
        best = s["raw"]["best_throughput_rps"]
        checks.append(
            {
                "target": f"c={top}: service >= 90% of raw best-batch throughput",
                "measured": round(svc / best, 3),
                "holds": svc / best >= 0.9,
            }
        )
    if "raw" in s and "1" in svc_levels(s):
        p50 = s["service"]["levels"]["1"]["latency_ms"]["p50"]
        raw = s["raw"]["batch1_latency_ms"]["p50"]
        checks.append(
            {
                "target": "c=1: service p50 <= raw batch-1 p50 + 15%",
                "measured": round(p50 / raw, 3),
                "holds": p50 <= raw * 1.15,
            }
        )
    warm, after = s["service"]["rss_mb_after_warmup"], s["service"]["rss_mb_after_run"]
    checks.append(
        {
            "target": "service RSS after the run <= 1.2x after warm-up",
            "measured": round(after / warm, 3),
            "holds": after <= 1.2 * warm,
        }
    )
    return checks


def svc_levels(stacks: dict[str, Any]) -> dict[str, Any]:
    return stacks.get("service", {}).get("levels", {})


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Run {result['started']} on {result['machine']}; ONNX Runtime {result['onnxruntime']}, "
        f"{result['threads']} threads per session; photo {result['photo']}; "
        f"`{result['command']}`",
        "",
        "| model | stack | concurrency | req/s | p50 ms | p95 ms | p99 ms | RSS MB warm → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, model in result["models"].items():
        for stack, data in model["stacks"].items():
            if stack == "raw":
                lat = data["batch1_latency_ms"]
                lines.append(
                    f"| {name} | raw ORT, batch 1 | 1 | {data['batch1_throughput_rps']:.1f} "
                    f"| {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | |"
                )
                lines.append(
                    f"| {name} | raw ORT, best batch ({data['best_batch']}) | – "
                    f"| {data['best_throughput_rps']:.1f} | | | | |"
                )
                continue
            rss = f"{data['rss_mb_after_warmup']:.0f} → {data['rss_mb_after_run']:.0f}"
            for c, level in data["levels"].items():
                lat = level["latency_ms"]
                lines.append(
                    f"| {name} | {stack} | {c} | {level['throughput_rps']:.1f} | "
                    f"{lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | {rss} |"
                )
                rss = ""
    lines += ["", "| model | target | measured | holds |", "|---|---|---|---|"]
    for name, model in result["models"].items():
        for c in model["targets"]:
            lines.append(
                f"| {name} | {c['target']} | {c['measured']} | {'yes' if c['holds'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 7.5), squeeze=False)
    colors = {"service": "#2a7ab9", "naive": "#d98c2b", "litserve": "#7a56a6"}
    for col, name in enumerate(models):
        stacks = result["models"][name]["stacks"]
        servers = [s for s in SERVERS if s in stacks]
        levels = result["concurrency"]
        width = 0.8 / max(1, len(servers))
        for row, metric in enumerate(("throughput_rps", "p99")):
            ax = axes[row][col]
            for i, s in enumerate(servers):
                vals = [
                    stacks[s]["levels"][str(c)]["throughput_rps"]
                    if metric == "throughput_rps"
                    else stacks[s]["levels"][str(c)]["latency_ms"]["p99"]
                    for c in levels
                ]
                xs = [x + (i - (len(servers) - 1) / 2) * width for x in range(len(levels))]
                ax.bar(xs, vals, width, label=s, color=colors[s])
            if "raw" in stacks and metric == "throughput_rps":
                raw = stacks["raw"]
                ax.axhline(
                    raw["best_throughput_rps"],
                    ls="--",
                    c="k",
                    lw=1,
                    label=f"raw ORT best batch ({raw['best_batch']})",
                )
                ax.axhline(
                    raw["batch1_throughput_rps"], ls=":", c="gray", lw=1, label="raw ORT batch 1"
                )
            ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
            ax.set_ylabel("requests / s" if row == 0 else "p99 latency (ms)")
            ax.set_title(f"{name}: " + ("throughput" if row == 0 else "p99 latency"))
            if row == 0:
                ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Loopback, {result['threads']} ORT threads, {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default="classifier,resnet50,detector",
        help="comma list: classifier, resnet50, detector, or model folders",
    )
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"comma list of {', '.join(STACKS)}")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=600, help="per measurement, at most")
    p.add_argument("--seconds", type=float, default=15.0, help="per measurement, at most")
    p.add_argument("--image", type=Path, help="default: the Darknet dog.jpg test photo")
    p.add_argument(
        "--threads",
        type=int,
        default=benchkit.cores(),
        help="ONNX Runtime intra-op threads, every stack",
    )
    p.add_argument("--max-batch", type=int, default=8, help="service and LitServe")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="service and LitServe")
    p.add_argument("--raw-batches", default="1,2,4,8,16")
    p.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="IIS_KEY=VALUE",
        help="extra service setting (repeatable), e.g. IIS_ORT_SPINNING=true",
    )
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.stacks = [s for s in args.stacks.split(",") if s]
    unknown = set(args.stacks) - set(STACKS)
    if unknown:
        p.error(f"unknown stacks: {', '.join(sorted(unknown))}")
    args.raw_batches = [int(b) for b in args.raw_batches.split(",")]
    return args


def default_photo() -> Path:
    from scripts.build_models import CACHE

    photo = CACHE / "testdata" / "dog.jpg"
    if not photo.is_file():
        raise SystemExit(f"{photo} is missing: run python scripts/build_models.py, or pass --image")
    return photo


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from service.cards import read_card

    args = parse_args(argv)
    image = args.image or default_photo()
    photo = image.read_bytes()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python scripts/bench.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {benchkit.cores()} cores, "
        f"Python {platform.python_version()}",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "photo": image.name,
        "concurrency": args.concurrency,
        "settings": {
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "requests": args.requests,
            "seconds": args.seconds,
            "service_env": args.service_env,
        },
        "models": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="iis-bench-"))
    try:
        for key in [k for k in args.models.split(",") if k]:
            folder = resolve_model(key, args.models_dir)
            card = read_card(folder).card
            if card.task not in TASK_PATH:
                raise SystemExit(
                    f"{folder.name}: bench covers classify and detect, not {card.task}"
                )
            print(f"== {folder.name} ({card.task})", flush=True)
            stacks: dict[str, Any] = {}
            if "raw" in args.stacks:
                stacks["raw"] = raw_ceiling(
                    folder, photo, args.threads, args.seconds, args.raw_batches
                )
                r = stacks["raw"]
                print(
                    f"  raw       batch 1 p50 {r['batch1_latency_ms']['p50']:.2f} ms; best batch "
                    f"{r['best_batch']}: {r['best_throughput_rps']:.1f} img/s",
                    flush=True,
                )
            for stack in SERVERS:
                if stack in args.stacks:
                    stacks[stack] = bench_server(stack, folder, card.task, photo, args, tmp)
            answers = {s: d["answer"] for s, d in stacks.items() if "answer" in d}
            model = {
                "folder": str(folder),
                "task": card.task,
                "stacks": stacks,
                "answers": answers,
                "answers_agree": len(set(answers.values())) <= 1,
            }
            model["targets"] = check_targets(model, args.concurrency, card.task == "classify")
            result["models"][folder.name] = model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "bench.md").write_text(table)
    chart(result, args.out / "bench.png")
    print()
    print(table)
    for name, model in result["models"].items():
        if not model["answers_agree"]:
            print(f"warning: {name}: stacks disagree: {model['answers']}")
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
