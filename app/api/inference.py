"""Inference on the edited model. Every answer names the version it ran on."""

from __future__ import annotations

import time
from typing import Any, NoReturn

from fastapi import APIRouter, Depends, Request

from app.api.deps import model_runtime, services, wait_for_version
from app.auth import Principal, require
from app.schemas import GenerateIn, GenerateOut, ProbeIn, ProbeOut

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/generate", response_model=GenerateOut)
def generate(body: GenerateIn, request: Request, _: Principal = Depends(require("read"))) -> GenerateOut:
    svc = services(request)
    runtime = model_runtime(request)
    if len(body.prompt) > svc.settings.max_prompt_chars:
        _field_error("prompt", f"longer than {svc.settings.max_prompt_chars} characters")
    if body.max_tokens > svc.settings.max_new_tokens:
        _field_error("max_tokens", f"at most {svc.settings.max_new_tokens}")
    wait_for_version(request, body.min_version, body.wait_s)
    t0 = time.perf_counter()
    try:
        result = runtime.generate(body.prompt, body.max_tokens, body.temperature, body.stop, body.seed)
    except ValueError as exc:  # ContextTooLong
        _field_error(getattr(exc, "field", "prompt"), str(exc))
    latency = time.perf_counter() - t0
    svc.metrics.inference_latency.labels("generate").observe(latency)
    return GenerateOut(text=result.text, version=result.version, tokens=result.tokens, latency_s=latency)


@router.post("/probe", response_model=ProbeOut)
def probe(body: ProbeIn, request: Request, _: Principal = Depends(require("read"))) -> ProbeOut:
    svc = services(request)
    runtime = model_runtime(request)
    for name in ("prompt", "target"):
        if len(getattr(body, name)) > svc.settings.max_prompt_chars:
            _field_error(name, f"longer than {svc.settings.max_prompt_chars} characters")
    wait_for_version(request, body.min_version, body.wait_s)
    t0 = time.perf_counter()
    try:
        r = runtime.probe(body.prompt, body.target)
    except ValueError as exc:  # ContextTooLong, or a target that tokenizes to nothing
        _field_error(getattr(exc, "field", "target"), str(exc))
    svc.metrics.inference_latency.labels("probe").observe(time.perf_counter() - t0)
    return ProbeOut(probability=r.probability, logprob=r.logprob, rank=r.first_token_rank, greedy=r.greedy,
                    greedy_text=r.greedy_text, version=r.version)


@router.get("/model")
def model_info(request: Request, _: Principal = Depends(require("read"))) -> dict[str, Any]:
    """Base model, editor, device, edited modules, live version and its weights hash, and the
    request limits this service enforces (``limits``: what clients size their uploads by)."""
    s = services(request).settings
    limits = {"max_batch": s.max_batch, "max_prompt_chars": s.max_prompt_chars, "max_target_chars": s.max_target_chars,
              "max_paraphrases": s.max_paraphrases, "max_locality": s.max_locality, "max_new_tokens": s.max_new_tokens,
              "max_request_bytes": s.max_request_bytes}
    return {**model_runtime(request).info(), "limits": limits}


def _field_error(field: str, msg: str) -> NoReturn:
    from fastapi.exceptions import RequestValidationError

    raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": msg}])
