"""``GET /v1/kpis``: edit success, side effects, cost and latency per time bucket (read scope)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status

from app.api.deps import ServicesDep, Timestamp
from app.auth import Principal, require
from app.db import session_scope
from app.kpis import BUCKET_SECONDS, kpi_series
from app.schemas import KpiSeriesOut

router = APIRouter(prefix="/v1", tags=["kpis"])

MAX_BUCKETS = 2000  # a window this many buckets wide at most: a chart, not a table dump


@router.get("/kpis", response_model=KpiSeriesOut, responses={400: {"description": "window too wide or inverted"}})
def kpis(
    svc: ServicesDep,
    _: Principal = Depends(require("read")),
    bucket: Annotated[Literal["minute", "hour", "day"], Query(description="width of one bucket")] = "hour",
    since: Annotated[Timestamp | None, Query(description="start (default: 48 buckets before until)")] = None,
    until: Annotated[Timestamp | None, Query(description="end (default: now)")] = None,
) -> KpiSeriesOut:
    """KPI trends of the edit history, oldest bucket first; buckets without edits are left out."""
    width = timedelta(seconds=BUCKET_SECONDS[bucket])
    end = _aware(until) if until is not None else datetime.now(timezone.utc)
    start = _aware(since) if since is not None else end - 48 * width
    if start >= end:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if (end - start) / width > MAX_BUCKETS:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            f"the window spans more than {MAX_BUCKETS} {bucket} buckets: choose a wider bucket or a shorter window")
    with session_scope(svc.sessions) as s:
        buckets = kpi_series(s, bucket, start, end)
    return KpiSeriesOut(bucket=bucket, since=start, until=end, buckets=buckets)  # type: ignore[arg-type]


def _aware(when: datetime) -> datetime:
    """A time without a zone is read as UTC (what the service stores)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
