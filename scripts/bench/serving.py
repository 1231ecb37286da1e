"""Side-by-side serving benchmark: this service against raw onnxruntime, a plain FastAPI app
(ORT thread spinning off and on), LitServe and KServe, on the same model, the same photos and
the same load client, in one run.

    python -m scripts bench --models classifier   # MobileNetV2, both photos, every stack
    python -m scripts bench                       # + ResNet-50 (random weights), detector
    python -m scripts bench --models classifier --concurrency 1,16 --seconds 10
    python -m scripts bench --models path/to/my-model-folder --photos my.jpg --out artifacts/b

Everything runs on loopback, bounded by --requests and --seconds per measurement. Every server
of a model and photo is started by this script (the same ONNX Runtime thread count for all),
warmed up and paused; then, --rounds times, each is resumed in turn and measured at every
concurrency level while the others are paused (SIGSTOP), the raw ceiling first in each round.
A burst from another job on the machine so costs one round of every stack, not one stack; the
table gives the median of the rounds' throughputs and percentiles over all their requests:

  raw         in this process: decode + preprocess + session.run + postprocess, at batch 1
              (latency) and at the batch size that gives the most images/s (the ceiling)
  service     python -m service (this project), default settings, only the model under test;
              POST /classify (or /detect) with a multipart upload
  oip         the same service through its Open Inference Protocol route: tritonclient.http
              sends the JPEG as a BYTES input (classifiers only)
  plain       scripts/bench/apps/plain_app.py: FastAPI + one session, no batching, work inline
              in a sync handler, ORT thread spinning off
  plain-spin  the same app with ORT's default, spinning on
  litserve    scripts/bench/apps/litserve_app.py: LitServe with its batching on (same max
              batch and wait as the service)
  kserve      scripts/bench/apps/kserve_app.py: KServe's model server (v2 protocol), a sync
              model class doing the same work inline; driven by tritonclient.http like `oip`
              (classifiers only)

Photos (--photos): `chelsea` (scikit-image's cat, saved as a 451x300 JPEG) and `dog` (Darknet's
dog.jpg, 768x576), or paths. The peers reuse the service's preprocess/postprocess code
(apps/pipeline.py), so the comparison is of serving architecture and the hot path around
the model. Beside latency and throughput, each level records the server's CPU time per request
(all its processes and threads), which other jobs on the machine disturb far less than
throughput. Writes bench.json, bench.md (the table) and bench.png (the chart) into --out,
prints the table and the targets. Needs the `dev` extra (aiohttp, psutil, litserve, kserve,
tritonclient, matplotlib, scikit-image) and, for the ResNet-50, torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from scripts.bench import kit as benchkit
from scripts.constants import CACHE, ROOT, service_max_pixels

STACKS = ("raw", "service", "oip", "plain", "plain-spin", "litserve", "kserve")
SERVERS = STACKS[1:]
PLAIN = ("plain", "plain-spin")
OIP_STACKS = ("oip", "kserve")  # Open Inference Protocol clients: classifiers only
BUILT = {"classifier": "mobilenet_v2-imagenet", "detector": "yolov3-tiny-coco"}
RESNET50 = "resnet50-random"
BENCH_CACHE = CACHE / "bench"
PHOTOS = ("chelsea", "dog")
TASK_PATH = {"classify": "/classify", "detect": "/detect"}


# ---------------------------------------------------------------------------- models


def resolve_model(key: str, models_dir: Path) -> Path:
    """classifier | detector | resnet50 | a model folder -> the folder (model.onnx + card)."""
    if key in BUILT:
        folder = models_dir / BUILT[key]
        if not (folder / "model.onnx").is_file():
            raise SystemExit(f"{folder} is missing: run python -m scripts build-models")
        return folder
    if key == "resnet50":
        folder = BENCH_CACHE / RESNET50
        if not (folder / "model.onnx").is_file():
            print(f"exporting a random-weight ResNet-50 to {folder} (timing only)", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "scripts",
                    "export",
                    "classify",
                    "--arch",
                    "resnet50",
                    "--random",
                    "--name",
                    RESNET50,
                    "--out",
                    str(BENCH_CACHE),
                ],
                cwd=ROOT,
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


class RawCeiling:
    """In-process onnxruntime with the service's own decode, preprocess and postprocess: the
    latency at batch 1 and the images/s at each batch size, with no HTTP at all. Measured a
    round at a time (between the servers' rounds, all of them paused), summed up over all."""

    def __init__(self, folder: Path, photo: bytes, threads: int, batches: list[int]) -> None:
        from scripts.bench.apps.pipeline import Pipeline
        from service.images import decode
        from service.preprocess import needed_side

        self.pipe = Pipeline.load(folder, threads)
        side = needed_side(self.pipe.card)
        self.decode = lambda: decode(photo, max_pixels=service_max_pixels(), min_side=side)
        self.batches = batches
        self.latencies: list[float] = []
        self.rates: dict[int, list[float]] = {n: [] for n in batches}
        for n in (1, max(batches)):  # warm-up, both shapes
            self.step(n)

    def step(self, n: int) -> None:
        images = [self.decode() for _ in range(n)]
        tensor, geometries = self.pipe.prepare(images)
        self.pipe.answer(self.pipe.run(tensor), geometries)

    def round(self, seconds: float) -> None:
        stop_at = time.perf_counter() + seconds / 2
        taken = 0
        while taken < 30 or (time.perf_counter() < stop_at and taken < 300):
            t0 = time.perf_counter()
            self.step(1)
            self.latencies.append((time.perf_counter() - t0) * 1000)
            taken += 1
        for n in self.batches:
            self.step(n)
            stop_at = time.perf_counter() + seconds / 2 / len(self.batches)
            rates: list[float] = []
            while len(rates) < 3 or time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                self.step(n)
                rates.append(n / (time.perf_counter() - t0))
            self.rates[n] += rates

    def summary(self) -> dict[str, Any]:
        per_batch = {str(n): round(statistics.median(r), 2) for n, r in self.rates.items()}
        best = max(per_batch, key=lambda k: per_batch[k])
        return {
            "batch1_latency_ms": benchkit.summary(self.latencies),
            "batch1_throughput_rps": round(1000 / statistics.median(self.latencies), 2),
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
    if stack in ("service", "oip"):
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
    if stack in PLAIN:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "scripts.bench.apps.plain_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        env = common | {"BENCH_ORT_SPINNING": "1" if stack == "plain-spin" else "0"}
        return benchkit.serve(argv, port=port, ready_path="/health", env=env, log=log)
    if stack == "litserve":
        env = common | {
            "BENCH_PORT": str(port),
            "BENCH_MAX_BATCH": str(args.max_batch),
            "BENCH_BATCH_TIMEOUT": str(args.max_wait_ms / 1000),
        }
        argv = [sys.executable, "-m", "scripts.bench.apps.litserve_app"]
        return benchkit.serve(argv, port=port, ready_path="/health", env=env, log=log)
    if stack == "kserve":
        env = common | {
            "BENCH_PORT": str(port),
            "BENCH_MODEL_NAME": folder.name,
            "KSERVE_LOGLEVEL": "WARNING",
        }
        argv = [sys.executable, "-m", "scripts.bench.apps.kserve_app"]
        ready = f"/v2/models/{folder.name}/ready"
        return benchkit.serve(argv, port=port, ready_path=ready, env=env, log=log)
    raise ValueError(stack)


def sender(
    stack: str, url: str, task: str, name: str, photo: bytes
) -> tuple[benchkit.Send, benchkit.OpenClient]:
    """How `stack` is called: the request function and the client it runs on."""
    if stack == "service":
        send = benchkit.multipart_sender(
            f"{url}{TASK_PATH[task]}?model={name}", "image", "photo.jpg", photo
        )
        return send, benchkit.aiohttp_session
    if stack in PLAIN:
        return (
            benchkit.multipart_sender(f"{url}/predict", "image", "photo.jpg", photo),
            benchkit.aiohttp_session,
        )
    if stack in OIP_STACKS:
        send = benchkit.oip_image_sender(name, photo, base64_encode=stack == "kserve")
        return send, benchkit.triton_client(url)
    return benchkit.json_image_sender(f"{url}/predict", photo), benchkit.aiohttp_session


def answer_of(task: str, body: Any) -> str:
    """A short fingerprint of an answer, to check every stack says the same thing."""
    if body is None:
        return "-"
    if task == "classify":
        return str(body["predictions"][0]["label"])
    labels = sorted(d["label"] for d in body["detections"])
    return ",".join(labels)


def measure(
    server: benchkit.Server,
    send: benchkit.Send,
    client: benchkit.OpenClient,
    concurrency: int,
    args: argparse.Namespace,
) -> tuple[benchkit.LoadResult, float]:
    """One measurement: the load result and the server's CPU seconds spent on it (its 2c
    unmeasured warm-up requests included: the same share for every stack)."""
    cpu_before = server.cpu_seconds()
    result = asyncio.run(
        benchkit.drive(
            send,
            concurrency=concurrency,
            requests=args.requests,
            seconds=args.seconds,
            warmup=2 * concurrency,
            client=client,
        )
    )
    return result, server.cpu_seconds() - cpu_before


def bench_servers(
    names: list[str],
    folder: Path,
    task: str,
    photo: bytes,
    args: argparse.Namespace,
    tmp: Path,
    raw: RawCeiling | None = None,
) -> tuple[dict[str, Any], list[float]]:
    """Start every server in `names`, warm each up, then measure in `args.rounds` rounds: each
    round runs every concurrency level on every server, the servers' order rotating, and the
    servers not being measured are paused. A burst from other jobs on the machine then costs
    one round of every stack, not every round of one. Per level: the median of the rounds'
    throughputs; latency percentiles over all rounds' requests; server CPU over all rounds.
    `raw` takes its round first in each round, every server paused. Also returns, per round,
    how many cores the machine's other jobs kept busy meanwhile (all CPU time less this
    process's and the servers')."""
    out: dict[str, Any] = {}
    live: dict[str, tuple[benchkit.Server, benchkit.Send, benchkit.OpenClient]] = {}
    runs: dict[tuple[str, int], list[tuple[benchkit.LoadResult, float]]] = {}
    loads: list[float] = []  # cores other jobs on the machine used, per round
    top = max(args.concurrency)
    with ExitStack() as servers:
        for name in names:
            port = benchkit.free_port()
            server = servers.enter_context(start(name, folder, port, args, tmp))
            send, client = sender(name, server.url, task, folder.name, photo)
            warm = asyncio.run(
                benchkit.drive(send, concurrency=top, requests=4 * top, seconds=60, client=client)
            )
            out[name] = {
                "answer": answer_of(task, warm.first_body),
                "rss_mb_after_warmup": round(server.rss_mb(), 1),
                "levels": {},
            }
            server.pause()
            live[name] = (server, send, client)
        for r in range(args.rounds):
            if raw is not None:
                raw.round(args.seconds)
            order = names[r % len(names) :] + names[: r % len(names)] if names else []
            busy0, ours0 = benchkit.machine_busy_seconds(), time.process_time()
            ours0 += sum(live[name][0].cpu_seconds() for name in names)
            wall0 = time.perf_counter()
            for name in order:
                server, send, client = live[name]
                server.resume()
                for c in args.concurrency:
                    runs.setdefault((name, c), []).append(measure(server, send, client, c, args))
                server.pause()
            ours = time.process_time() + sum(live[name][0].cpu_seconds() for name in names)
            others = (benchkit.machine_busy_seconds() - busy0 - (ours - ours0)) / (
                time.perf_counter() - wall0
            )
            loads.append(round(max(others, 0.0), 2))
            print(
                f"  round {r + 1}/{args.rounds} done; other jobs used {loads[-1]:.2f} cores",
                flush=True,
            )
        for name in names:
            server = live[name][0]
            server.resume()
            out[name]["rss_mb_after_run"] = round(server.rss_mb(), 1)
    for (name, c), measured in runs.items():
        merged = benchkit.LoadResult()
        for result, _ in measured:
            merged.latencies_ms += result.latencies_ms
            merged.server_ms += result.server_ms
            merged.seconds += result.seconds
            for status, n in result.statuses.items():
                merged.statuses[status] = merged.statuses.get(status, 0) + n
        level = merged.to_json()
        rates = [result.throughput for result, _ in measured]
        level["throughput_rps"] = round(statistics.median(rates), 2)
        level["throughput_rounds_rps"] = [round(rate, 1) for rate in rates]
        served = sum(result.ok + 2 * c for result, _ in measured)
        cpu_ms = sum(cpu for _, cpu in measured) * 1000 / max(1, served)
        level["server_cpu_ms_per_request"] = round(cpu_ms, 2)
        out[name]["levels"][str(c)] = level
        lat = level["latency_ms"]
        print(
            f"  {name:10s} c={c:<3d} {level['throughput_rps']:8.1f} req/s "
            f"(rounds {', '.join(f'{x:.0f}' for x in rates)})  p50 {lat['p50']:8.2f} ms"
            f"  p99 {lat['p99']:8.2f} ms  cpu {cpu_ms:5.2f} ms/req"
            f"  ({merged.ok} ok, {sum(merged.statuses.values()) - merged.ok} not)",
            flush=True,
        )
    return {name: out[name] for name in names}, loads


# ---------------------------------------------------------------------------- report


def check_targets(case: dict[str, Any], concurrency: list[int]) -> list[dict[str, Any]]:
    """The issue's targets for one model and photo, each with the figures it was judged on:
    at the top concurrency, this service (and its OIP route) at least as fast as the best
    plain app and at >= 90% of raw ONNX Runtime's best throughput; at concurrency 1, p50 within
    1 ms of the plain app's; memory flat over the run."""
    checks: list[dict[str, Any]] = []
    s = case["stacks"]
    top = str(max(concurrency))

    def rps(stack: str) -> float | None:
        level = s.get(stack, {}).get("levels", {}).get(top)
        return None if level is None else float(level["throughput_rps"])

    plains = {p: rps(p) for p in PLAIN if rps(p) is not None}
    best_plain = max(plains, key=lambda p: plains[p] or 0.0) if plains else None
    for stack in ("service", "oip"):
        mine = rps(stack)
        if mine is None:
            continue
        if best_plain is not None and plains[best_plain]:
            other = plains[best_plain] or 0.0
            checks.append(
                {
                    "target": f"c={top}: {stack} >= best plain app ({best_plain}) throughput",
                    "measured": round(mine / other, 3),
                    "holds": mine >= other,
                }
            )
        if "raw" in s:
            best = s["raw"]["best_throughput_rps"]
            checks.append(
                {
                    "target": f"c={top}: {stack} >= 90% of raw ORT best throughput",
                    "measured": round(mine / best, 3),
                    "holds": mine / best >= 0.9,
                }
            )
        one = s[stack]["levels"].get("1")
        plain_one = s.get("plain", {}).get("levels", {}).get("1")
        if one is not None and plain_one is not None:
            delta = one["latency_ms"]["p50"] - plain_one["latency_ms"]["p50"]
            checks.append(
                {
                    "target": f"c=1: {stack} p50 <= plain p50 + 1 ms",
                    "measured": f"{delta:+.2f} ms",
                    "holds": delta <= 1.0,
                }
            )
    if "service" in s:
        warm, after = s["service"]["rss_mb_after_warmup"], s["service"]["rss_mb_after_run"]
        checks.append(
            {
                "target": "service RSS after the run <= 1.2x after warm-up",
                "measured": round(after / warm, 3),
                "holds": after <= 1.2 * warm,
            }
        )
    return checks


def cases(result: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(model name, photo name, case) for every model and photo measured."""
    for name, model in result["models"].items():
        for photo, case in model["photos"].items():
            yield name, photo, case


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Run {result['started']} on {result['machine']}; ONNX Runtime {result['onnxruntime']}, "
        f"{result['threads']} threads per session; req/s: median of "
        f"{result['settings']['rounds']} interleaved rounds of up to "
        f"{result['settings']['requests']} requests; 1-minute load average "
        f"{result['load_average'][0]:.2f} at the start, {result['load_average'][1]:.2f} at the "
        f"end; `{result['command']}`",
        "",
        "| model | photo | stack | concurrency | req/s | p50 ms | p95 ms | p99 ms "
        "| server CPU ms/req | RSS MB warm → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, photo, case in cases(result):
        for stack, data in case["stacks"].items():
            if stack == "raw":
                lat = data["batch1_latency_ms"]
                lines.append(
                    f"| {name} | {photo} | raw ORT, batch 1 | 1 "
                    f"| {data['batch1_throughput_rps']:.1f} | {lat['p50']:.2f} | {lat['p95']:.2f} "
                    f"| {lat['p99']:.2f} | | |"
                )
                lines.append(
                    f"| {name} | {photo} | raw ORT, best batch ({data['best_batch']}) | – "
                    f"| {data['best_throughput_rps']:.1f} | | | | | |"
                )
                continue
            rss = f"{data['rss_mb_after_warmup']:.0f} → {data['rss_mb_after_run']:.0f}"
            for c, level in data["levels"].items():
                lat = level["latency_ms"]
                lines.append(
                    f"| {name} | {photo} | {stack} | {c} | {level['throughput_rps']:.1f} | "
                    f"{lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | "
                    f"{level['server_cpu_ms_per_request']:.2f} | {rss} |"
                )
                rss = ""
    lines.append("")
    for name, photo, case in cases(result):
        loads = ", ".join(f"{x:.2f}" for x in case.get("other_jobs_cores_by_round", []))
        lines.append(f"{name}, {photo}: cores used by other jobs in each round: {loads}  ")
    lines += ["", "| model | photo | target | measured | holds |", "|---|---|---|---|---|"]
    for name, photo, case in cases(result):
        for c in case["targets"]:
            lines.append(
                f"| {name} | {photo} | {c['target']} | {c['measured']} "
                f"| {'yes' if c['holds'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    """One column per model and photo: throughput (top) and p99 latency (bottom) per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(cases(result))
    fig, axes = plt.subplots(2, len(columns), figsize=(6 * len(columns), 7.5), squeeze=False)
    colors = {
        "service": "#2a7ab9",
        "oip": "#6fb1e0",
        "plain": "#d98c2b",
        "plain-spin": "#f0c27b",
        "litserve": "#7a56a6",
        "kserve": "#5a9e5a",
    }
    for col, (name, photo, case) in enumerate(columns):
        stacks = case["stacks"]
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
            what = "throughput" if row == 0 else "p99 latency"
            ax.set_title(f"{name}, {photo}: {what}", fontsize=9)
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
    p.add_argument("--requests", type=int, default=400, help="per measurement, at most")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement, at most")
    p.add_argument(
        "--rounds", type=int, default=3, help="measurements per stack and level, interleaved"
    )
    p.add_argument(
        "--photos",
        default=",".join(PHOTOS),
        help="comma list: chelsea (451x300), dog (768x576), or JPEG paths",
    )
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


def photo_path(key: str) -> Path:
    """chelsea | dog | a path -> the photo file."""
    if key == "chelsea":
        path = BENCH_CACHE / "chelsea.jpg"
        if not path.is_file():
            from PIL import Image
            from skimage import data

            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.chelsea()).save(path)  # 451x300, Pillow's default quality
        return path
    if key == "dog":
        from scripts.constants import CACHE

        path = CACHE / "testdata" / "dog.jpg"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run python -m scripts build-models")
        return path
    path = Path(key)
    if not path.is_file():
        raise SystemExit(f"--photos: {key!r} is neither chelsea/dog nor a file")
    return path


def bench_case(
    folder: Path, task: str, photo: bytes, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Every stack asked for, on one model and one photo."""
    stacks: dict[str, Any] = {}
    raw = None
    if "raw" in args.stacks:
        raw = RawCeiling(folder, photo, args.threads, args.raw_batches)
    names = []
    for stack in SERVERS:
        if stack not in args.stacks:
            continue
        if stack in OIP_STACKS and task != "classify":
            print(f"  {stack:10s} skipped: the OIP image client here reads a classifier's labels")
            continue
        names.append(stack)
    servers, loads = bench_servers(names, folder, task, photo, args, tmp, raw)
    if raw is not None:
        stacks["raw"] = r = raw.summary()
        print(
            f"  raw        batch 1 p50 {r['batch1_latency_ms']['p50']:.2f} ms; best batch "
            f"{r['best_batch']}: {r['best_throughput_rps']:.1f} img/s",
            flush=True,
        )
    stacks.update(servers)
    answers = {s: d["answer"] for s, d in stacks.items() if "answer" in d}
    case = {
        "stacks": stacks,
        "other_jobs_cores_by_round": loads,
        "answers": answers,
        "answers_agree": len(set(answers.values())) <= 1,
    }
    case["targets"] = check_targets(case, args.concurrency)
    return case


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from service.cards import read_card

    args = parse_args(argv)
    photos = [photo_path(k) for k in args.photos.split(",") if k]
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m scripts bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {benchkit.cores()} cores, "
        f"Python {platform.python_version()}",
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "photos": {p.name: _photo_size(p) for p in photos},
        "concurrency": args.concurrency,
        "settings": {
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "requests": args.requests,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "service_env": args.service_env,
        },
        "load_average": [round(os.getloadavg()[0], 2)],
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
            model: dict[str, Any] = {"folder": str(folder), "task": card.task, "photos": {}}
            for photo in photos:
                size = result["photos"][photo.name]
                print(f"== {folder.name} ({card.task}), {photo.name} {size}", flush=True)
                model["photos"][photo.name] = bench_case(
                    folder, card.task, photo.read_bytes(), args, tmp
                )
            result["models"][folder.name] = model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average"].append(round(os.getloadavg()[0], 2))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "bench.md").write_text(table)
    chart(result, args.out / "bench.png")
    print()
    print(table)
    for name, photo, case in cases(result):
        if not case["answers_agree"]:
            print(f"warning: {name}, {photo}: stacks disagree: {case['answers']}")
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


def _photo_size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return f"{img.width}x{img.height}"
