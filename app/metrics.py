"""Prometheus metrics of one service instance.

Each app gets its own ``CollectorRegistry`` (not the process-global default), so several apps in
one process (tests, or an API and a worker sharing a process) never clash on registration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.status import EditStatus, VersionKind

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class QueueDepth(Collector):
    """``smedit_queue_depth``, reported only by the process that owns the queue (the editing worker
    holding the lock): the queue is shared, so a gauge in every process would make ``sum()``
    count it once per process. Elsewhere the family is declared with no sample."""

    NAME = "smedit_queue_depth"
    HELP = "Jobs waiting in the queue (reported by the leading editing worker only)"

    def __init__(self) -> None:
        self.depth: Callable[[], int] | None = None
        self.owner: Callable[[], bool] = lambda: False

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP)
        if self.depth is not None and self.owner():
            try:
                family.add_metric([], float(self.depth()))
            except Exception:  # noqa: BLE001 - the queue (Redis) is down: no value, not a failed scrape
                family.add_metric([], math.nan)
        yield family


class Metrics:
    """All metrics the API and the worker report."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.edits = Counter("smedit_edits", "Edit status transitions, by new status", ["status"], registry=r)
        for status in EditStatus:
            self.edits.labels(status)  # every series exists from the start (0, not "No data")
        self.queue_depth = QueueDepth()
        r.register(self.queue_depth)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.edit_latency = Histogram(
            "smedit_edit_latency_seconds", "Time from submission to applied", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.compute_latency = Histogram(
            "smedit_edit_compute_seconds", "Time to compute one batch delta", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "smedit_edit_batch_size", "Edits per committed batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.versions = Counter("smedit_versions_created", "Model versions created", ["kind"], registry=r)
        for kind in VersionKind:
            if kind != VersionKind.BASE:
                self.versions.labels(kind)
        self.edit_success = Histogram(
            "smedit_edit_success_ratio", "Edit success (ES) the gate measured, per decided edit", buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.edit_generalisation = Histogram(
            "smedit_edit_generalisation_ratio", "Generalisation (GS, paraphrases) the gate measured, per decided "
            "edit with paraphrases", buckets=_RATIO_BUCKETS, registry=r,
        )
        self.edit_side_effects = Histogram(
            "smedit_edit_side_effects_ratio", "Share of canaries whose answer an edit's batch changed against the "
            "committed state, per decided edit", buckets=_RATIO_BUCKETS, registry=r,
        )
        self.live_version = Gauge("smedit_live_version", "Model version this process serves", registry=r)
        self.inference_latency = Histogram(
            "smedit_inference_seconds", "Inference latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.gate_rejections = Counter(
            "smedit_gate_rejections", "Edits failing the quality gate, by failed check", ["check"], registry=r
        )
        for check in ("es", "gs", "canary", "capacity", "breaks"):
            self.gate_rejections.labels(check)  # every series exists from the start (0, not "No data")
        self.side_effects = Gauge(
            "smedit_side_effects_ratio",
            "Share of the gate's canaries whose greedy answer differs from the base model's, on the "
            "committed state (set by the worker)", registry=r,
        )
        self.side_effect_budget = Gauge(
            "smedit_side_effect_budget_ratio", "The side-effect budget (SMEDIT_SIDE_EFFECT_BUDGET)", registry=r
        )
        self.worker_leader = Gauge(
            "smedit_worker_leader", "1 while this process is the one editing worker (holds the lock)", registry=r
        )
        self.requeued = Counter(
            "smedit_jobs_requeued", "Pending jobs re-enqueued from the database (lost by the queue)", registry=r
        )
        self.version_lag = Gauge(
            "smedit_version_lag", "Latest committed version minus the version this process serves", registry=r
        )
        self.http_requests = Counter(
            "smedit_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )

    def track_queue(self, depth: Callable[[], int], owner: Callable[[], bool]) -> None:
        """Report ``depth()`` while ``owner()`` is true (this process leads the editing)."""
        self.queue_depth.depth, self.queue_depth.owner = depth, owner

    def observe_measure(self, numbers: dict) -> None:
        """One decided edit's measured ES / GS / side effects (absent numbers are skipped)."""
        for histogram, key in ((self.edit_success, "es"), (self.edit_generalisation, "gs")):
            if isinstance(numbers.get(key), (int, float)):
                histogram.observe(numbers[key])
        side = numbers.get("canary_new", numbers.get("canary_changed"))
        if isinstance(side, (int, float)):
            self.edit_side_effects.observe(side)

    def render(self) -> bytes:
        return generate_latest(self.registry)
