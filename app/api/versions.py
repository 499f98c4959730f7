"""Model versions: history, restore, and a version's LoRA adapter as a zip."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError

from app import repository as repo
from app.adapter_zip import NothingToExport, adapter_zip
from app.api.deps import Offset, QueryText, Timestamp, ServicesDep, VersionNumber, enqueue, model_runtime, require_queue, version_out
from app.services import Services
from app.status import JobKind, VersionKind
from app.auth import Principal, require
from app.db import session_scope
from app.schemas import ActionIn, JobAccepted, Page, VersionOut

router = APIRouter(prefix="/v1", tags=["versions"])


def _live(svc: Services) -> int | None:
    return svc.runtime.live_version if svc.runtime is not None else None


@router.get("/versions", response_model=Page[VersionOut])
def list_versions(
    svc: ServicesDep,
    _: Principal = Depends(require("read")),
    kind: VersionKind | None = None,
    created_by: Annotated[QueryText | None, Query(max_length=200)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    q: Annotated[QueryText | None, Query(max_length=200, description="text in the version note")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Page[VersionOut]:
    """Versions, newest first; ``live`` marks the one this process serves."""
    live = _live(svc)
    with session_scope(svc.sessions) as s:
        rows, total = repo.list_versions(s, kind, created_by, since, until, q, limit, offset)
        return Page[VersionOut](items=[version_out(v, live) for v in rows], total=total, limit=limit, offset=offset)


@router.get("/versions/{number}", response_model=VersionOut)
def get_version(number: VersionNumber, svc: ServicesDep, _: Principal = Depends(require("read"))) -> VersionOut:
    with session_scope(svc.sessions) as s:
        try:
            return version_out(repo.get_version(s, number), _live(svc))
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post("/versions/consolidate", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def consolidate(svc: ServicesDep, request: Request, principal: Principal = Depends(require("admin"))) -> JobAccepted:
    """Queue a consolidation: every live edit re-solved together from the base weights into one
    delta, committed (kind ``consolidate``) only if it passes the gate as a whole."""
    require_queue(svc)
    with session_scope(svc.sessions) as s:
        latest = repo.latest_version(s)
        if latest is None or len(latest.active_deltas) < 2:
            raise HTTPException(status.HTTP_409_CONFLICT, "fewer than two live deltas: nothing to consolidate")
        basis = latest.number
    try:
        with session_scope(svc.sessions) as s:  # one consolidation per state
            job_id = repo.create_job(s, JobKind.CONSOLIDATE, principal.name, basis=basis).id
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a consolidation of version {basis} was already accepted") from None
    enqueue(svc, [job_id])
    return JobAccepted(job_id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))


@router.post("/versions/{number}/restore", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def restore_version(
    number: VersionNumber, svc: ServicesDep, request: Request, body: ActionIn | None = None,
    principal: Principal = Depends(require("admin")),
) -> JobAccepted:
    """Queue a restore: a new version with exactly version ``number``'s active deltas (same bits);
    an optional ``reason`` goes into the job and the version's note."""
    require_queue(svc)
    with session_scope(svc.sessions) as s:
        try:
            target = repo.get_version(s, number)
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        latest = repo.latest_version(s)
        if latest is not None and list(latest.active_deltas) == list(target.active_deltas):
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"version {number}'s state is already live (version {latest.number}): nothing to restore")
        basis = latest.number if latest is not None else None
    try:
        with session_scope(svc.sessions) as s:  # the database refuses a second restore from this state
            job_id = repo.create_job(s, JobKind.RESTORE, principal.name, target_version=number, basis=basis,
                                     reason=body.reason if body else None).id
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a restore to version {number} was already accepted") from None
    enqueue(svc, [job_id])
    return JobAccepted(job_id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))


@router.get("/versions/{number}/adapter", response_class=Response, responses={
    200: {"description": "a zip of adapter_config.json, adapter_model.safetensors, smedit_export.json",
          "content": {"application/zip": {}}},
    404: {"description": "no such version"}, 409: {"description": "the version is the base model"},
    503: {"description": "the model is still loading"}})
def version_adapter(
    number: VersionNumber, svc: ServicesDep, request: Request, _: Principal = Depends(require("admin")),
    max_rank: Annotated[int | None, Query(ge=1, le=65536, description="cap the rank (truncated SVD; the "
                                          "error is in smedit_export.json); default exact")] = None,
) -> Response:
    """Version ``number`` minus the base model as a PEFT LoRA adapter, zipped (what ``smedit export
    lora`` writes): unzip it and ``PeftModel.from_pretrained(base, DIR)``."""
    runtime = model_runtime(request)
    try:
        data, report = adapter_zip(svc.sessions, runtime, number, max_rank)
    except repo.NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except NothingToExport as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    name = f"smedit-v{number}-lora.zip"
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "X-Smedit-Adapter-Rank": str(report["rank"]),
        "X-Smedit-Adapter-Exact": "true" if report["exact"] else "false"})
