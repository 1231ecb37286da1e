"""Prometheus metrics, one registry per app (tests build many apps in one process).

Names (all prefixed `iis_`):
    requests_total{endpoint,status}          counter
    request_duration_seconds{endpoint}       histogram, whole request inside the server
    stage_duration_seconds{endpoint,stage}   histogram, each `timing_ms` step (decode,
                                             preprocess, queue, inference, postprocess, ...)
                                             of every successful request
    errors_total{code}                       counter, by the error body's `code`
    batch_size{model}                        histogram, rows per ONNX Runtime run
    inference_duration_seconds{model}        histogram, one session.run
    queue_wait_seconds{model}                histogram, time a request waited for its batch
    queue_depth{model}                       gauge, requests waiting now
    model_load_seconds{model}, model_warmup_seconds{model}   gauges
    model_info{model,task,provider}          gauge = 1, provider = the one really active
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from service.runtime import ModelRuntime

from starlette.types import Message, Receive, Scope, Send

from service.asgi import HttpMiddleware
from service.timing import collect_reports

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Stages go down to a fraction of a millisecond (postprocess of a top-k).
_STAGE_BUCKETS = (0.0001, 0.0005, 0.001, *_LATENCY_BUCKETS)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "iis_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.duration = Histogram(
            "iis_request_duration_seconds",
            "Request time in the server",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stages = Histogram(
            "iis_stage_duration_seconds",
            "One step of a successful request, as in its timing_ms",
            ["endpoint", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.errors = Counter("iis_errors", "Error answers by code", ["code"], registry=r)
        self.batch_size = Histogram(
            "iis_batch_size",
            "Rows per ONNX Runtime run",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "iis_inference_duration_seconds",
            "One session.run",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "iis_queue_wait_seconds",
            "Wait for a batch slot",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("iis_queue_depth", "Requests waiting", ["model"], registry=r)
        self.load = Gauge("iis_model_load_seconds", "Session creation time", ["model"], registry=r)
        self.warmup = Gauge("iis_model_warmup_seconds", "Warm-up time", ["model"], registry=r)
        self.info = Gauge(
            "iis_model_info",
            "Loaded models and their active provider",
            ["model", "task", "provider"],
            registry=r,
        )
        self.loads = Counter(
            "iis_model_loads", "Model version loads by outcome", ["model", "outcome"], registry=r
        )
        self.load_failures = Counter(
            "iis_model_load_failures",
            "Refused model loads by the field that failed (postprocess.activation, model.onnx)",
            ["model", "reason"],
            registry=r,
        )
        self.unloads = Counter(
            "iis_model_unloads", "Model versions unloaded", ["model"], registry=r
        )
        self.load_phase = Histogram(
            "iis_model_load_phase_seconds",
            "Time of each load phase: session, warmup (with its checks), golden",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_stages(self, endpoint: str, steps_ms: dict[str, float]) -> None:
        for stage, ms in steps_ms.items():
            self.stages.labels(endpoint, stage).observe(ms / 1000)

    def model_loaded(self, runtime: ModelRuntime) -> None:
        self.loads.labels(runtime.name, "loaded").inc()
        self.load_phase.labels("session").observe(runtime.load_ms / 1000)
        self.load_phase.labels("warmup").observe(runtime.warmup_ms / 1000)
        self.load_phase.labels("golden").observe(runtime.check_ms / 1000)

    def model_failed(self, name: str, field: str) -> None:
        self.loads.labels(name, "failed").inc()
        self.load_failures.labels(name, field).inc()

    def model_unloaded(self, name: str) -> None:
        self.unloads.labels(name).inc()

    def untrack_model(self, name: str) -> None:
        """Drop a model's per-model series (and the closures that hold its runtime)."""
        for metric in (self.queue_depth, self.load, self.warmup):
            try:
                metric.remove(name)
            except KeyError:
                pass
        for labels in [k for k in self.info._metrics if k and k[0] == name]:
            self.info.remove(*labels)

    def track_model(self, runtime: ModelRuntime) -> None:
        """Point a model's series at the runtime now serving it (the newest ready version)."""
        name = runtime.name
        for labels in [k for k in self.info._metrics if k and k[0] == name]:
            self.info.remove(*labels)
        self.load.labels(name).set(runtime.load_ms / 1000)
        self.warmup.labels(name).set(runtime.warmup_ms / 1000)
        self.info.labels(name, runtime.card.task, runtime.active_providers[0]).set(1)
        self.queue_depth.labels(name).set_function(lambda: runtime.batcher.depth)
        batch_size = self.batch_size.labels(name)
        inference = self.inference.labels(name)
        queue_wait = self.queue_wait.labels(name)

        def observe(rows: int, run_s: float, waits_s: list[float]) -> None:
            batch_size.observe(rows)
            inference.observe(run_s)
            for wait in waits_s:
                queue_wait.observe(wait)

        runtime.batcher.observer = observe


def metrics_of(scope: Scope) -> Metrics | None:
    app = scope.get("app")
    state = getattr(app, "state", None)
    return getattr(state, "metrics", None)


class MetricsMiddleware(HttpMiddleware):
    """Counts every answer and times it, labelled by the route's path template (so random
    404 paths do not create new series); a successful answer's `timing_ms` steps feed the
    stage histogram."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with collect_reports() as reports:
            try:
                await self.app(scope, receive, recording_send)
            finally:
                metrics = metrics_of(scope)
                if metrics is not None:
                    route = scope.get("route")
                    endpoint = getattr(route, "path", None) or "unmatched"
                    metrics.requests.labels(endpoint, str(status)).inc()
                    metrics.duration.labels(endpoint).observe(time.perf_counter() - started)
                    if status < 400:
                        for steps in reports:
                            metrics.observe_stages(endpoint, steps)
