"""Shared helpers of the routers: the services object and model conversions."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from pydantic import AfterValidator, BeforeValidator

from app import repository as repo
from app.db import session_scope
from app.text_checks import first_control_character, has_lone_surrogate
from app.services import Services
from app.tables import Edit, Job, Version
from app.schemas import EditOut, JobOut, Timings, VersionOut

# Row ids are int4 on PostgreSQL: a number past that is a 422 naming the parameter, not a 500.
MAX_ROW_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="a row id (1 .. 2^31-1)")]
VersionNumber = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="a version number (0 = the base model)")]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="rows to skip")]


def _iso_only(value: object) -> object:
    """pydantic reads a bare number as a Unix time; the API promises ISO 8601 (``format: date-time``)."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\s*[-+]?[\d.eE+-]+\s*", value)):
        raise ValueError("must be an ISO 8601 date-time such as 2026-12-03T10:00:00Z, not a number")
    return value


def _in_utc_range(value: datetime) -> datetime:
    """A time that stays a time in UTC (``0001-01-01T00:00+14:00`` would fall before year 1)."""
    if value.tzinfo is not None:
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError("is outside the years 1..9999 in UTC") from None
    return value


def _query_text(value: str) -> str:
    """Query strings follow the body's text policy (app.text_checks): PostgreSQL cannot even hold a NUL."""
    bad = first_control_character(value)
    if bad is not None or has_lone_surrogate(value):
        raise ValueError(f"must be text without control characters (found U+{ord(bad or value[0]):04X})"
                         if bad else "must be valid Unicode")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_utc_range)]  # ISO 8601 only
QueryText = Annotated[str, AfterValidator(_query_text)]  # a search or filter string


if TYPE_CHECKING:
    from app.runtime import ModelRuntime


def services(request: Request) -> Services:
    return request.app.state.services


def require_queue(svc: Services) -> None:
    """Before persisting a job: 503 (with the reason) when the queue cannot take it now, so a
    client never gets an error for a job that was in fact stored (and then retries it twice)."""
    svc.queue.check()


def enqueue(svc: Services, job_ids: list[int]) -> None:
    """After the jobs' rows are committed. If the queue fails right now, the jobs are stored all
    the same and the worker's re-enqueue sweep picks them up from the database: still 202."""
    import logging

    try:
        svc.queue.put_many(job_ids)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("app.api").warning(
            "enqueue failed after commit; the worker's sweep will re-enqueue", extra={"jobs": job_ids, "error": str(exc)}
        )


def model_runtime(request: Request) -> ModelRuntime:
    """The loaded model runtime, or 503 (with ``Retry-After``) while it is still loading."""
    svc = services(request)
    if svc.runtime is None:
        detail = svc.startup_error or "model is still loading; see /readyz"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "5"})
    return svc.runtime


ServicesDep = Annotated[Services, Depends(services)]
RuntimeDep = Annotated["ModelRuntime", Depends(model_runtime)]


def wait_for_version(request: Request, min_version: int | None, wait_s: float | None) -> None:
    """Block until ``min_version`` is live in this process (read-your-writes for a client that
    just made an edit): 409 if no committed or pending job can ever create it, 504 when it is
    not live within ``wait_s`` (capped by the ``min_version_timeout_s`` setting). Blocking: call it in a thread."""
    if min_version is None:
        return
    svc = services(request)
    runtime = model_runtime(request)
    if runtime.live_version is not None and runtime.live_version >= min_version:
        return
    with session_scope(svc.sessions) as s:
        # pending first: the two reads are not one snapshot, and a job that finishes between them
        # has committed its version before it stops being pending, so the later read sees it
        pending = bool(repo.pending_job_ids(s))
        latest = repo.latest_version(s)
        latest_n = latest.number if latest else -1
    if latest_n < min_version and not pending:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"version {min_version} does not exist (latest is {latest_n}) and no job is pending that could create it",
        )
    timeout = min(wait_s or svc.settings.min_version_timeout_s, svc.settings.min_version_timeout_s)
    if not runtime.wait_for_version(min_version, timeout):
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            f"version {min_version} not live after {timeout:g} s (live: {runtime.live_version}, latest committed: {latest_n})",
        )


def edit_out(e: Edit) -> EditOut:
    queued = (e.started_at - e.created_at).total_seconds() if e.started_at else None
    run = (e.finished_at - e.started_at).total_seconds() if e.finished_at and e.started_at else None
    total = (e.finished_at - e.created_at).total_seconds() if e.finished_at else None
    return EditOut(
        id=e.id, status=e.status, prompt=e.prompt, target=e.target, paraphrases=list(e.paraphrases or []),
        locality=list(e.locality or []), author=e.author, reason=e.reason, submitted_by=e.submitted_by,
        created_at=e.created_at, started_at=e.started_at, finished_at=e.finished_at,
        applied_version=e.applied_version, reverted_version=e.reverted_version, delta_id=e.delta_id,
        metrics=e.metrics, error=e.error, timings=Timings(queued_s=queued, run_s=run, total_s=total),
        supersedes=e.supersedes, superseded_by=e.superseded_by,
    )


def job_out(j: Job) -> JobOut:
    return JobOut(
        id=j.id, kind=j.kind, status=j.status, edit_id=j.edit_id, target_version=j.target_version,
        requested_by=j.requested_by, reason=j.reason, created_at=j.created_at, finished_at=j.finished_at,
        result_version=j.result_version, error=j.error,
    )


def version_out(v: Version, live: int | None) -> VersionOut:
    return VersionOut(
        number=v.number, kind=v.kind, created_at=v.created_at, active_deltas=list(v.active_deltas),
        weights_hash=v.weights_hash, job_id=v.job_id, created_by=v.created_by, note=v.note,
        edit_ids=list(v.edit_ids or []), live=live == v.number, side_effects=v.side_effects,
    )
