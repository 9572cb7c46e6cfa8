"""Prometheus metrics, one registry per app (so two apps in one process - tests - never collide).

Names follow Prometheus conventions (`_total`, `_seconds`); the labels are low-cardinality by design:
`endpoint` is the route template, never the raw path, and `model` is a served model's name.

Split serving (`mmserve serve --frontends N`): every process (frontends, engine) records into
prometheus-client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor before any
child starts) and any frontend's /metrics renders the sum over all of them, so a scrape that lands on
one frontend sees the whole server. Gauges say how they combine (`multiprocess_mode`): in-flight
requests, queue depth and decoder rows add up over live processes; readiness is the engine's.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "ModelMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    """All the server's instruments. `render()` is what GET /metrics returns."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mmserve_requests_total", "HTTP requests by endpoint, method and status code",
            ["endpoint", "method", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "mmserve_request_duration_seconds", "HTTP request latency (first byte in to last byte out)",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("mmserve_requests_in_flight", "HTTP requests being handled", registry=r,
                               multiprocess_mode="livesum")
        self.items = Counter(
            "mmserve_items_total", "inference items (images, texts) by model and outcome", ["model", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "mmserve_batch_size", "items per model run (decoder rows per step for translators)", ["model"],
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_duration = Histogram(
            "mmserve_batch_duration_seconds", "wall time of one model run (one decoder step for translators)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("mmserve_queue_depth", "items waiting for a model run", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.queue_wait = Histogram(
            "mmserve_queue_wait_seconds", "time an item waited in the queue before its model run started",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "mmserve_rejected_total", "items refused or dropped before running, by reason", ["model", "reason"],
            registry=r,
        )
        self.backend_errors = Counter(
            "mmserve_backend_errors_total", "model runs that raised", ["model"], registry=r,
        )
        self.active_rows = Gauge(
            "mmserve_decoder_rows_active", "translator: decoder rows in the running batch", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.decoder_joins = Counter(
            "mmserve_decoder_joins_total", "translator: sentences that joined a running decode between steps "
            "(continuous batching)", ["model"], registry=r,
        )
        self.ready = Gauge("mmserve_ready", "1 when every model is loaded and warmed up", registry=r,
                           multiprocess_mode="livemax")
        self._aggregate: CollectorRegistry | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._aggregate = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._aggregate)

    def render(self) -> bytes:
        """This process's registry, or in split serving the sum over every process's files."""
        return generate_latest(self._aggregate or self.registry)

    def for_model(self, name: str) -> "ModelMetrics":
        return ModelMetrics(self, name)


class ModelMetrics:
    """One model's instruments with their labels bound once: `.labels()` is a dict lookup under a
    lock, too slow to repeat several times per request on the hot path."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.queue_depth = metrics.queue_depth.labels(model)
        self.queue_wait = metrics.queue_wait.labels(model)
        self.batch_size = metrics.batch_size.labels(model)
        self.batch_duration = metrics.batch_duration.labels(model)
        self.items_ok = metrics.items.labels(model, "ok")
        self.backend_errors = metrics.backend_errors.labels(model)
        self.active_rows = metrics.active_rows.labels(model)
        self.decoder_joins = metrics.decoder_joins.labels(model)
        self._rejected = metrics.rejected
        self._model = model
        self._reasons: dict = {}

    def rejected(self, reason: str, n: int) -> None:
        counter = self._reasons.get(reason)
        if counter is None:
            counter = self._reasons[reason] = self._rejected.labels(self._model, reason)
        counter.inc(n)
