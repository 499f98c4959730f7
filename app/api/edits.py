"""Submitting edits, their status and history, revert, review (approve / reject), job status."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError

from app import repository as repo
from app.api.deps import Offset, QueryText, Timestamp, RowId, ServicesDep, edit_out, enqueue, job_out, require_queue
from app.budget import budget_spent
from app.auth import Principal, require
from app.db import session_scope
from app.status import EditStatus, JobKind
from app.tables import Edit
from app.schemas import ActionIn, EditOut, EditSubmission, JobAccepted, JobOut, Page, ReviewIn, SubmitOut, check_submission

router = APIRouter(prefix="/v1", tags=["edits"])

def _submit_out(request: Request, ids: list[int], duplicate: bool) -> SubmitOut:
    urls = [str(request.url_for("get_edit", edit_id=i)) for i in ids]
    return SubmitOut(edit_ids=ids, status_urls=urls, status_url=urls[0], duplicate=duplicate)


def _too_long(svc: ServicesDep, body: EditSubmission) -> list[dict]:
    """Rows (prompt or paraphrase + target, locality prompt + answer) past the model's context,
    as field errors with their token counts: the editor could not even read them."""
    runtime = svc.runtime
    if runtime is None or runtime.context is None:
        return []
    errors = []

    def check(loc: tuple, prompt: str, answer: str, what: str) -> None:
        try:
            n = runtime.pair_tokens(prompt, answer)
        except ValueError as exc:  # an answer the tokenizer turns into no token at all
            errors.append({"type": "value_error", "loc": ("body", "edits", *loc), "input": None, "msg": str(exc)})
            return
        if n > runtime.context:  # type: ignore[operator]
            errors.append({"type": "value_error", "loc": ("body", "edits", *loc), "input": None,
                           "msg": f"{what} need {n} tokens; the model's context is {runtime.context}"})

    for i, e in enumerate(body.edits):
        check((i, "prompt"), e.prompt, e.target, "prompt and target")
        for j, p in enumerate(e.paraphrases):
            check((i, "paraphrases", j), p, e.target, "paraphrase and target")
        for j, probe in enumerate(e.locality):
            check((i, "locality", j, "prompt"), probe.prompt, probe.answer or "", "locality prompt and answer")
    return errors


def _check_state(svc: ServicesDep, body: EditSubmission) -> None:
    """Refuse what the model and the current state cannot take, before anything is stored: rows
    longer than the context (422), a ``supersedes`` that names no applied edit (422 / 409), and
    any edit once the side-effect budget is spent (409, reason ``capacity``)."""
    errors = _too_long(svc, body)
    with session_scope(svc.sessions) as s:
        for i, e in enumerate(body.edits):
            if e.supersedes is None:
                continue
            old = s.get(Edit, e.supersedes)
            if old is None:
                errors.append({"type": "value_error", "loc": ("body", "edits", i, "supersedes"),
                               "msg": f"edit {e.supersedes} does not exist", "input": e.supersedes})
            elif old.status != EditStatus.APPLIED:
                raise HTTPException(status.HTTP_409_CONFLICT, {
                    "reason": "not_applied", "field": f"edits[{i}].supersedes",
                    "message": f"edit {old.id} is {old.status}; only an applied edit can be superseded"})
        if errors:
            raise RequestValidationError(errors)
        spent = budget_spent(s, svc.settings.side_effect_budget) if svc.settings.gate_enabled else None
    if spent is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, {
            "reason": "capacity",
            "message": f"the side-effect budget is spent: {spent['changed']} of {spent['total']} canaries answer "
                       f"differently from the base model (budget {svc.settings.side_effect_budget}); revert "
                       "edits or raise SMEDIT_SIDE_EFFECT_BUDGET (docs/operations.md)",
            "side_effects": spent})


@router.post("/edits", status_code=status.HTTP_202_ACCEPTED, response_model=SubmitOut)
def submit_edits(
    body: EditSubmission,
    svc: ServicesDep, request: Request,
    principal: Principal = Depends(require("edit")),
    idempotency_header: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> SubmitOut:
    """Persist the edits (and their jobs), then queue them; answers before they are computed."""
    errors = check_submission(body, svc.settings)
    if errors:
        raise RequestValidationError(errors)
    key = body.idempotency_key or idempotency_header
    payload = body.model_dump(exclude={"idempotency_key"})
    fingerprint = repo.request_fingerprint(payload)
    items = [
        repo.NewEdit(e.prompt, e.target, list(e.paraphrases), [p.model_dump() for p in e.locality], e.supersedes)
        for e in body.edits
    ]
    author = body.author or principal.name
    require_queue(svc)
    _check_state(svc, body)
    for attempt in range(2):
        if key is not None:
            with session_scope(svc.sessions) as s:
                prior = repo.find_idempotent(s, key)
                if prior is not None:
                    if prior.request_hash != fingerprint:
                        raise HTTPException(
                            status.HTTP_409_CONFLICT,
                            f"idempotency key {key!r} was already used for a different request",
                        )
                    return _submit_out(request, list(prior.edit_ids), duplicate=True)
        try:
            with session_scope(svc.sessions) as s:
                edits, jobs = repo.create_edits(
                    s, items, author, body.reason, principal.name, idempotency_key=key, request_hash=fingerprint
                )
                edit_ids, job_ids = [e.id for e in edits], [j.id for j in jobs]
            break
        except IntegrityError:
            if key is None or attempt == 1:
                raise
            # A concurrent request with the same key won the race: answer with its edits.
    for _ in edit_ids:
        svc.metrics.edits.labels(EditStatus.QUEUED).inc()
    enqueue(svc, job_ids)  # after commit: the worker never sees a job that isn't stored
    return _submit_out(request, edit_ids, duplicate=False)


@router.get("/edits", response_model=Page[EditOut])
def list_edits(
    svc: ServicesDep,
    _: Principal = Depends(require("read")),
    status_: Annotated[EditStatus | None, Query(alias="status")] = None,
    author: Annotated[QueryText | None, Query(max_length=200)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    q: Annotated[QueryText | None, Query(max_length=200, description="text in prompt, target or reason")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Page[EditOut]:
    """History of edits, newest first."""
    with session_scope(svc.sessions) as s:
        rows, total = repo.list_edits(s, status_, author, since, until, q, limit, offset)
        return Page[EditOut](items=[edit_out(e) for e in rows], total=total, limit=limit, offset=offset)


@router.get("/edits/{edit_id}", response_model=EditOut, name="get_edit")
def get_edit(
    edit_id: RowId,
    svc: ServicesDep,
    _: Principal = Depends(require("read")),
    wait_s: float = Query(0.0, ge=0.0, le=30.0, description="long poll: answer as soon as the edit leaves "
                          "queued/running, or after this many seconds"),
) -> EditOut:
    deadline = time.monotonic() + wait_s
    while True:
        seen = svc.runtime.progress() if svc.runtime is not None else 0
        with session_scope(svc.sessions) as s:
            try:
                out = edit_out(repo.get_edit(s, edit_id))
            except repo.NotFound as exc:
                raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        left = deadline - time.monotonic()
        if out.status not in (EditStatus.QUEUED, EditStatus.RUNNING) or left <= 0:
            return out
        # woken by the local worker or a new live version; elsewhere (a replica whose edit was
        # rejected, so no version came) the database is read again every 0.25 s
        if svc.runtime is not None:
            svc.runtime.wait_progress(seen, min(0.25, left))
        else:
            time.sleep(min(0.25, left))


@router.post("/edits/{edit_id}/revert", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def revert_edit(
    edit_id: RowId, svc: ServicesDep, request: Request, body: ActionIn | None = None,
    principal: Principal = Depends(require("admin")),
) -> JobAccepted:
    """Queue a revert: a new version without this edit (see docs/api.md for batch semantics); an
    optional ``reason`` goes into the job and the version's note."""
    require_queue(svc)
    with session_scope(svc.sessions) as s:
        try:
            edit = repo.get_edit(s, edit_id)
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        if edit.status != EditStatus.APPLIED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"edit {edit_id} is {edit.status}, only applied edits can be reverted")
        basis = edit.applied_version
    try:
        with session_scope(svc.sessions) as s:  # the database refuses a second revert of this application
            job_id = repo.create_job(s, JobKind.REVERT, principal.name, edit_id=edit_id, basis=basis,
                                     reason=body.reason if body else None).id
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"edit {edit_id} is already being reverted") from None
    enqueue(svc, [job_id])
    return JobAccepted(job_id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))


@router.post("/edits/{edit_id}/approve", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def approve_edit(
    edit_id: RowId, svc: ServicesDep, request: Request, body: ReviewIn | None = None, principal: Principal = Depends(require("admin"))
) -> JobAccepted:
    """Review mode: apply an edit the gate held back (recomputed on the current model, gate waived)."""
    require_queue(svc)
    with session_scope(svc.sessions) as s:
        try:
            edit = repo.get_edit(s, edit_id)
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        if edit.status != EditStatus.NEEDS_REVIEW:
            raise HTTPException(status.HTTP_409_CONFLICT, f"edit {edit_id} is {edit.status}, not needs_review")
        edit.status, edit.approved, edit.reviewed_by, edit.error = EditStatus.QUEUED, True, principal.name, None
        job = repo.create_job(s, JobKind.EDIT, principal.name, edit_id=edit_id, reason=body.note if body else None)
        job_id = job.id
    svc.metrics.edits.labels(EditStatus.QUEUED).inc()
    enqueue(svc, [job_id])
    return JobAccepted(job_id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))


@router.post("/edits/{edit_id}/reject", response_model=EditOut)
def reject_edit(
    edit_id: RowId, svc: ServicesDep, body: ReviewIn | None = None, principal: Principal = Depends(require("admin"))
) -> EditOut:
    """Review mode: a held edit is rejected for good (its numbers stay in the history)."""
    with session_scope(svc.sessions) as s:
        try:
            edit = repo.get_edit(s, edit_id)
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        if edit.status != EditStatus.NEEDS_REVIEW:
            raise HTTPException(status.HTTP_409_CONFLICT, f"edit {edit_id} is {edit.status}, not needs_review")
        edit.status, edit.reviewed_by = EditStatus.REJECTED, principal.name
        if body is not None and body.note:
            edit.error = f"rejected in review: {body.note}"
        out = edit_out(edit)
    svc.metrics.edits.labels(EditStatus.REJECTED).inc()
    return out


@router.get("/jobs/{job_id}", response_model=JobOut, name="get_job")
def get_job(job_id: RowId, svc: ServicesDep, _: Principal = Depends(require("read"))) -> JobOut:
    with session_scope(svc.sessions) as s:
        try:
            return job_out(repo.get_job(s, job_id))
        except repo.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
