"""Inference on the edited model. Every answer names the version it ran on."""

from __future__ import annotations

import time
from typing import Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Request, status

from app import repository as repo
from app.api.deps import model_engine, services
from app.auth import Principal, require
from app.db import session_scope
from app.schemas import GenerateIn, GenerateOut, ProbeIn, ProbeOut

router = APIRouter(prefix="/v1", tags=["inference"])


def _wait_version(request: Request, min_version: int | None, wait_s: float | None) -> None:
    """Block until ``min_version`` is live here: 409 if it can never come, 504 on timeout."""
    if min_version is None:
        return
    svc = services(request)
    engine = model_engine(request)
    if engine.live_version is not None and engine.live_version >= min_version:
        return
    with session_scope(svc.sessions) as s:
        latest = repo.latest_version(s)
        latest_n = latest.number if latest else -1
        pending = bool(repo.pending_job_ids(s))
    if latest_n < min_version and not pending:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"version {min_version} does not exist (latest is {latest_n}) and no job is pending that could create it",
        )
    timeout = min(wait_s or svc.settings.min_version_timeout_s, svc.settings.min_version_timeout_s)
    if not engine.wait_for_version(min_version, timeout):
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            f"version {min_version} not live after {timeout:g} s (live: {engine.live_version}, latest committed: {latest_n})",
        )


@router.post("/generate", response_model=GenerateOut)
def generate(body: GenerateIn, request: Request, _: Principal = Depends(require("read"))) -> GenerateOut:
    svc = services(request)
    engine = model_engine(request)
    if len(body.prompt) > svc.settings.max_prompt_chars:
        _field_error("prompt", f"longer than {svc.settings.max_prompt_chars} characters")
    if body.max_tokens > svc.settings.max_new_tokens:
        _field_error("max_tokens", f"at most {svc.settings.max_new_tokens}")
    _wait_version(request, body.min_version, body.wait_s)
    t0 = time.perf_counter()
    try:
        result = engine.generate(body.prompt, body.max_tokens, body.temperature, body.stop, body.seed)
    except ValueError as exc:  # ContextTooLong
        _field_error(getattr(exc, "field", "prompt"), str(exc))
    latency = time.perf_counter() - t0
    svc.metrics.inference_latency.labels("generate").observe(latency)
    return GenerateOut(text=result.text, version=result.version, tokens=result.tokens, latency_s=latency)


@router.post("/probe", response_model=ProbeOut)
def probe(body: ProbeIn, request: Request, _: Principal = Depends(require("read"))) -> ProbeOut:
    svc = services(request)
    engine = model_engine(request)
    for name in ("prompt", "target"):
        if len(getattr(body, name)) > svc.settings.max_prompt_chars:
            _field_error(name, f"longer than {svc.settings.max_prompt_chars} characters")
    _wait_version(request, body.min_version, body.wait_s)
    t0 = time.perf_counter()
    try:
        r = engine.probe(body.prompt, body.target)
    except ValueError as exc:  # ContextTooLong, or a target that tokenizes to nothing
        _field_error(getattr(exc, "field", "target"), str(exc))
    svc.metrics.inference_latency.labels("probe").observe(time.perf_counter() - t0)
    return ProbeOut(probability=r.probability, logprob=r.logprob, rank=r.first_token_rank, greedy=r.greedy,
                    greedy_text=r.greedy_text, version=r.version)


@router.get("/model")
def model_info(request: Request, _: Principal = Depends(require("read"))) -> dict[str, Any]:
    """Base model, editor, device, edited modules, live version and its weights hash."""
    return model_engine(request).info()


def _field_error(field: str, msg: str) -> NoReturn:
    from fastapi.exceptions import RequestValidationError

    raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": msg}])
