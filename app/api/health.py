"""Liveness, readiness and Prometheus metrics (unauthenticated: for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import services
from app.schemas import Ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready)
def readyz(request: Request) -> JSONResponse:
    """200 only when the model is loaded, the latest version replayed and the worker running."""
    svc = services(request)
    live = svc.engine.live_version if svc.engine is not None else None
    ready = Ready(
        ready=svc.model_loaded and svc.version_replayed and svc.worker_running and svc.startup_error is None,
        model_loaded=svc.model_loaded,
        version_replayed=svc.version_replayed,
        worker_running=svc.worker_running,
        live_version=live,
        detail=svc.startup_error,
        phase=svc.phase,
    )
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
