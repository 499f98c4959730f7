"""Prometheus metrics of one service instance.

Each app gets its own ``CollectorRegistry`` (not the process-global default), so several apps in
one process (tests, or an API and a worker sharing a process) never clash on registration.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """All metrics the API and the worker report."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.edits = Counter("smedit_edits", "Edit status transitions, by new status", ["status"], registry=r)
        self.queue_depth = Gauge("smedit_queue_depth", "Jobs waiting in the queue", registry=r)
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

    def track_queue(self, depth: Callable[[], int]) -> None:
        def read() -> float:
            try:
                return float(depth())
            except Exception:  # noqa: BLE001 - the queue (Redis) is down: no value, not a failed scrape
                return float("nan")

        self.queue_depth.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
