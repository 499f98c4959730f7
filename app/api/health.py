"""Liveness, readiness and Prometheus metrics (unauthenticated: for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep
from app.schemas import Ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready)
def readyz(svc: ServicesDep) -> JSONResponse:
    """200 only when the model is loaded, the latest version replayed, the worker running (worker
    roles) and the database reachable; also reports the live version, the lag behind the latest
    committed version, and the state of the database and queue."""
    from sqlalchemy import func, select

    from app.errors import dependency_of
    from app.tables import Version

    live = svc.runtime.live_version if svc.runtime is not None else None
    latest: int | None = None
    side_effects = None
    database = "ok"
    try:
        with svc.sessions() as s:
            latest = s.scalar(select(func.max(Version.number)))
            if latest is not None:
                side_effects = s.scalar(select(Version.side_effects).where(Version.number == latest))
    except Exception as exc:  # noqa: BLE001
        if dependency_of(exc) is None:
            raise
        database = f"unavailable: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    queue = "ok"
    try:
        svc.queue.check()
    except Exception as exc:  # noqa: BLE001
        queue = str(exc)[:300] or type(exc).__name__
    lag = (latest - live) if latest is not None and live is not None else None
    if lag is not None:
        svc.metrics.version_lag.set(max(lag, 0))
    worker = svc.worker
    ready_flag = (
        svc.model_loaded and svc.version_replayed and svc.worker_running and svc.startup_error is None
        and database == "ok" and (queue == "ok" or not svc.runs_worker)
    )
    ready = Ready(
        ready=ready_flag,
        model_loaded=svc.model_loaded,
        version_replayed=svc.version_replayed,
        worker_running=svc.worker_running,
        live_version=live,
        weights_hash=svc.runtime.live_hash if svc.runtime is not None else None,
        detail=svc.startup_error or (None if database == "ok" else f"database {database}"),
        phase=svc.phase,
        role=svc.role,
        latest_version=latest,
        lag=lag,
        worker_leader=(bool(worker.is_leader) if worker is not None else None),
        database=database,
        queue=queue,
        side_effects=side_effects,
        warnings=_warnings(svc, side_effects),
    )
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


def _warnings(svc: ServicesDep, side_effects: dict | None) -> list[str]:
    from app.budget import budget_is_spent

    budget = svc.settings.side_effect_budget
    out = []
    if svc.settings.gate_enabled and budget_is_spent(side_effects, budget):
        assert side_effects is not None
        out.append(f"side-effect budget spent: {side_effects['changed']} of {side_effects['total']} canaries "
                   f"differ from the base model (budget {budget}); new edits get 409 capacity")
    return out


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format", "content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
def metrics(svc: ServicesDep) -> Response:
    """Prometheus metrics of this process (text format; see docs/operations.md)."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)
