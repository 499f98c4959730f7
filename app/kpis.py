"""KPI trends: per time bucket, the numbers the people who run edits are judged by.

Computed from the edits and versions tables when asked, so there is no second bookkeeping that
could drift from the history. Per bucket (by when an edit was decided):

- ``decided`` / per-status counts, and ``accept_rate``: the share that passed the gate;
- ``edit_success`` / ``generalisation``: mean ES and GS the gate measured (``None`` where no
  decided edit was measured);
- ``side_effects``: mean share of canaries an edit's batch changed against the committed state;
  ``side_effects_vs_base``: the last version's measured share of canaries whose answer differs
  from the base model (the cumulative side effect of everything live);
- ``cost_s_per_edit``: compute seconds of a batch divided by its size, averaged;
- ``latency_p50_s`` / ``latency_p95_s``: submission to decision.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from statistics import fmean
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.status import EditStatus
from app.tables import Edit, Version

BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_ROWS = 20_000  # newest decided edits read per request: a bound on the work, not a sample
_DECISIONS = (EditStatus.APPLIED, EditStatus.REJECTED, EditStatus.NEEDS_REVIEW, EditStatus.FAILED,
              EditStatus.REVERTED, EditStatus.SUPERSEDED)
_PASSED = (EditStatus.APPLIED, EditStatus.REVERTED, EditStatus.SUPERSEDED)  # passed the gate once


@dataclass
class _Bucket:
    start: datetime
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    es: list[float] = field(default_factory=list)
    gs: list[float] = field(default_factory=list)
    side: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    vs_base: float | None = None

    def add(self, edit: Edit) -> None:
        self.statuses[edit.status] += 1
        m = edit.metrics or {}
        _append_number(self.es, m.get("es"))
        _append_number(self.gs, m.get("gs"))
        _append_number(self.side, m.get("canary_new", m.get("canary_changed")))
        size, compute = m.get("batch_size"), m.get("compute_s")
        if isinstance(size, int) and size > 0 and _is_number(compute):
            self.cost.append(compute / size)
        if edit.finished_at is not None:
            self.latency.append(max(0.0, (edit.finished_at - edit.created_at).total_seconds()))

    def out(self, width: int) -> dict[str, Any]:
        decided = sum(self.statuses.values())
        passed = sum(self.statuses.get(s, 0) for s in _PASSED)
        return {
            "start": self.start, "end": self.start + timedelta(seconds=width), "decided": decided,
            "statuses": dict(self.statuses), "accept_rate": passed / decided if decided else None,
            "edit_success": _mean(self.es), "generalisation": _mean(self.gs), "side_effects": _mean(self.side),
            "side_effects_vs_base": self.vs_base, "cost_s_per_edit": _mean(self.cost),
            "latency_p50_s": _quantile(self.latency, 0.5), "latency_p95_s": _quantile(self.latency, 0.95),
        }


def kpi_series(session: Session, bucket: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Buckets of ``bucket`` width from ``since`` to ``until`` with at least one decided edit or
    measured version, oldest first."""
    width = BUCKET_SECONDS[bucket]
    buckets: dict[int, _Bucket] = {}

    def at(when: datetime) -> _Bucket:
        index = int(when.timestamp()) // width
        if index not in buckets:
            buckets[index] = _Bucket(datetime.fromtimestamp(index * width, timezone.utc))
        return buckets[index]

    edits = session.scalars(
        select(Edit).where(Edit.status.in_([s.value for s in _DECISIONS]), Edit.finished_at >= since,
                           Edit.finished_at < until)
        .order_by(Edit.finished_at.desc()).limit(MAX_ROWS)
    )
    for edit in edits:
        at(edit.finished_at).add(edit)
    versions = session.scalars(
        select(Version).where(Version.created_at >= since, Version.created_at < until).order_by(Version.number)
    )
    for version in versions:
        share = (version.side_effects or {}).get("share")
        if _is_number(share):
            at(version.created_at).vs_base = float(share)  # ascending: the bucket's last version wins
    return [buckets[i].out(width) for i in sorted(buckets)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _append_number(values: list[float], value: Any) -> None:
    if _is_number(value):
        values.append(float(value))


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (what a dashboard shows; exact for the small counts per bucket)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
