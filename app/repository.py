"""Persistence operations: every read and write the API and the worker make to the database
(API keys: ``app/api_keys.py``).

Functions take a ``Session`` and never commit (the caller owns the transaction), so a caller can
group several operations into one atomic step: e.g. the worker writes the delta blob, the new
version, the edits' outcomes and the jobs' completion in one transaction, and a crash leaves
either all of it or none of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.status import EditStatus, JobKind, JobStatus
from app.tables import DeltaBlob, Edit, Idempotency, Job, Meta, Version, utcnow


class NotFound(LookupError):
    pass


class FencedOff(RuntimeError):
    """A writer tried to commit on top of a version that is no longer the latest, or to decide an
    edit/job another writer already decided: it is not (or no longer) the one worker. Nothing of
    its transaction is kept; it re-syncs and re-checks its lock."""


class ChecksumError(RuntimeError):
    """A stored delta blob does not match its sha256: storage corruption, refuse to use it."""


# ---- meta ---------------------------------------------------------------------------------
def get_meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def set_meta(session: Session, key: str, value: str) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value


# ---- edits and jobs -----------------------------------------------------------------------
@dataclass
class NewEdit:
    prompt: str
    target: str
    paraphrases: list[str]
    locality: list[dict[str, Any]]
    supersedes: int | None = None


def request_fingerprint(payload: Any) -> str:
    """A stable hash of a submission, to tell a retry from a different request reusing a key."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def find_idempotent(session: Session, key: str) -> Idempotency | None:
    return session.get(Idempotency, key)


def create_edits(
    session: Session,
    items: Sequence[NewEdit],
    author: str | None,
    reason: str | None,
    submitted_by: str | None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[list[Edit], list[Job]]:
    """Insert the edits and one ``edit`` job each (status pending). Flushes to get ids.

    With an idempotency key, the key row is inserted in the same transaction; a concurrent twin
    request fails on its primary key and the caller answers with the winner's ids.
    """
    now = utcnow()
    edits = [
        Edit(
            prompt=it.prompt,
            target=it.target,
            paraphrases=list(it.paraphrases),
            locality=list(it.locality),
            author=author,
            reason=reason,
            status=EditStatus.QUEUED,
            created_at=now,
            idempotency_key=idempotency_key,
            submitted_by=submitted_by,
            approved=False,
            supersedes=it.supersedes,
        )
        for it in items
    ]
    session.add_all(edits)
    session.flush()
    jobs = [Job(kind=JobKind.EDIT, status=JobStatus.PENDING, edit_id=e.id, requested_by=submitted_by, created_at=now) for e in edits]
    session.add_all(jobs)
    if idempotency_key is not None:
        session.add(
            Idempotency(
                key=idempotency_key, request_hash=request_hash or "", edit_ids=[e.id for e in edits], created_at=now
            )
        )
    session.flush()
    return edits, jobs


def create_job(
    session: Session, kind: str, requested_by: str | None, edit_id: int | None = None, target_version: int | None = None,
    basis: int | None = None, reason: str | None = None,
) -> Job:
    job = Job(
        kind=kind, status=JobStatus.PENDING, edit_id=edit_id, target_version=target_version, basis=basis,
        requested_by=requested_by, reason=reason, created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_edit(session: Session, edit_id: int) -> Edit:
    row = session.get(Edit, edit_id)
    if row is None:
        raise NotFound(f"edit {edit_id} not found")
    return row


def get_edits(session: Session, ids: Sequence[int]) -> list[Edit]:
    rows = {e.id: e for e in session.scalars(select(Edit).where(Edit.id.in_(list(ids))))}
    return [rows[i] for i in ids if i in rows]


def get_job(session: Session, job_id: int) -> Job:
    row = session.get(Job, job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


def latest_job_for_edit(session: Session, edit_id: int) -> Job | None:
    return session.scalar(select(Job).where(Job.edit_id == edit_id).order_by(Job.id.desc()).limit(1))


def pending_job_ids(session: Session) -> list[int]:
    """Jobs not finished, in their total order (for re-enqueueing after a restart)."""
    return list(session.scalars(select(Job.id).where(Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING))).order_by(Job.id)))


def stale_pending_job_ids(session: Session, created_before: datetime | None = None) -> list[int]:
    """Pending jobs (optionally only those created before a time), in id order: the periodic
    re-enqueue sweep compares them with what the queue holds."""
    query = select(Job.id).where(Job.status == JobStatus.PENDING)
    if created_before is not None:
        query = query.where(Job.created_at < created_before)
    return list(session.scalars(query.order_by(Job.id)))


def lock_job(session: Session, job_id: int) -> Job:
    """The job row, locked for this transaction (PostgreSQL ``FOR UPDATE``; SQLite has one writer)."""
    row = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


def lock_edit(session: Session, edit_id: int) -> Edit:
    row = session.get(Edit, edit_id, with_for_update=True, populate_existing=True)
    if row is None:
        raise NotFound(f"edit {edit_id} not found")
    return row


def finish_job(session: Session, job_id: int, result_version: int | None, now: datetime | None = None) -> Job:
    """Mark a running job done (in the caller's transaction), unless another writer decided it:
    then :class:`FencedOff`, and the whole transaction is rolled back by the caller."""
    job = lock_job(session, job_id)
    if job.status != JobStatus.RUNNING:
        raise FencedOff(f"job {job_id} is {job.status}: another writer decided it")
    job.status, job.finished_at, job.result_version = JobStatus.DONE, now or utcnow(), result_version
    return job


def reset_running(session: Session) -> int:
    """After a crash: running jobs and edits go back to pending/queued (their work was never committed)."""
    n = session.execute(update(Job).where(Job.status == JobStatus.RUNNING).values(status=JobStatus.PENDING, started_at=None)).rowcount
    session.execute(update(Edit).where(Edit.status == EditStatus.RUNNING).values(status=EditStatus.QUEUED, started_at=None))
    return int(n or 0)


def list_edits(
    session: Session,
    status: str | None = None,
    author: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Edit], int]:
    """Newest first, with the total count of matches for paging."""
    query = select(Edit)
    if status:
        query = query.where(Edit.status == status)
    if author:
        query = query.where(Edit.author == author)
    if since:
        query = query.where(Edit.created_at >= since)
    if until:
        query = query.where(Edit.created_at < until)
    if text:
        pattern = f"%{text.lower()}%"
        query = query.where(
            or_(func.lower(Edit.prompt).like(pattern), func.lower(Edit.target).like(pattern),
                func.lower(func.coalesce(Edit.reason, "")).like(pattern))
        )
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = list(session.scalars(query.order_by(Edit.id.desc()).limit(limit).offset(offset)))
    return rows, total


def live_edits(session: Session, delta_ids: Sequence[int]) -> list[Edit]:
    """Applied edits whose delta is among ``delta_ids`` (the live ones), oldest first."""
    if not delta_ids:
        return []
    query = select(Edit).where(Edit.status == EditStatus.APPLIED, Edit.delta_id.in_(list(delta_ids)))
    return list(session.scalars(query.order_by(Edit.id)))


def live_edit_facts(session: Session, delta_ids: Sequence[int]) -> list[tuple[int, str, str, list[str]]]:
    """(id, prompt, target, paraphrases) of the live edits, oldest first: the columns the gate
    reads on every edit, without the rest of the rows (their metrics JSON grows with history)."""
    if not delta_ids:
        return []
    query = select(Edit.id, Edit.prompt, Edit.target, Edit.paraphrases).where(
        Edit.status == EditStatus.APPLIED, Edit.delta_id.in_(list(delta_ids)))
    return [(int(i), p, t, list(ps or [])) for i, p, t, ps in session.execute(query.order_by(Edit.id))]


def live_edit_for_prompt(session: Session, prompt: str, delta_ids: Sequence[int]) -> Edit | None:
    """The latest live edit of exactly this prompt (surrounding whitespace ignored), if any."""
    if not delta_ids:
        return None
    query = select(Edit).where(Edit.status == EditStatus.APPLIED, Edit.delta_id.in_(list(delta_ids)),
                               func.trim(Edit.prompt) == prompt.strip())
    return session.scalar(query.order_by(Edit.id.desc()).limit(1))


def count_edits_by_status(session: Session) -> dict[str, int]:
    return {s: int(n) for s, n in session.execute(select(Edit.status, func.count()).group_by(Edit.status))}


# ---- versions and deltas ------------------------------------------------------------------
def latest_version(session: Session) -> Version | None:
    return session.scalar(select(Version).order_by(Version.number.desc()).limit(1))


def get_version(session: Session, number: int) -> Version:
    row = session.get(Version, number)
    if row is None:
        raise NotFound(f"version {number} not found")
    return row


def list_versions(
    session: Session,
    kind: str | None = None,
    created_by: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Version], int]:
    query = select(Version)
    if kind:
        query = query.where(Version.kind == kind)
    if created_by:
        query = query.where(Version.created_by == created_by)
    if since:
        query = query.where(Version.created_at >= since)
    if until:
        query = query.where(Version.created_at < until)
    if text:
        query = query.where(func.lower(func.coalesce(Version.note, "")).like(f"%{text.lower()}%"))
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = list(session.scalars(query.order_by(Version.number.desc()).limit(limit).offset(offset)))
    return rows, total


def create_version(
    session: Session,
    kind: str,
    active_deltas: Sequence[int],
    weights_hash: str | None,
    job_id: int | None = None,
    created_by: str | None = None,
    note: str | None = None,
    edit_ids: Sequence[int] = (),
    expect_latest: int | None = None,
) -> Version:
    """Append a version numbered max+1 in this transaction.

    The number is the primary key: if another writer committed the same number first, the flush
    or commit raises IntegrityError and this transaction rolls back instead of forking history.
    With ``expect_latest`` (the version the new state was computed on) the append is a
    compare-and-set: if any other version was committed since, :class:`FencedOff` is raised, so
    a writer that lost its lock can never append a state that drops someone else's delta.
    """
    current = session.scalar(select(func.max(Version.number)))
    if expect_latest is not None and current != expect_latest:
        raise FencedOff(f"version {current} was committed since this writer read version {expect_latest}")
    number = 0 if current is None else int(current) + 1
    row = Version(
        number=number, kind=kind, active_deltas=list(active_deltas), weights_hash=weights_hash,
        job_id=job_id, created_by=created_by, note=note, edit_ids=list(edit_ids), created_at=utcnow(),
    )
    session.add(row)
    if expect_latest is None:
        session.flush()
        return row
    from sqlalchemy.exc import IntegrityError

    try:
        session.flush()
    except IntegrityError:
        raise FencedOff(f"another writer committed version {number} concurrently") from None
    return row


def add_delta(
    session: Session, blob: bytes, edit_ids: Sequence[int], module_names: Sequence[str],
    info: dict[str, Any], compute_s: float,
) -> DeltaBlob:
    row = DeltaBlob(
        blob=blob, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob), edit_ids=list(edit_ids),
        module_names=list(module_names), info=dict(info), compute_s=compute_s, created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def load_delta_blobs(session: Session, ids: Sequence[int]) -> dict[int, bytes]:
    """The blobs of the given deltas, each checked against its stored sha256."""
    out: dict[int, bytes] = {}
    for row in session.scalars(select(DeltaBlob).where(DeltaBlob.id.in_(list(ids)))):
        if hashlib.sha256(row.blob).hexdigest() != row.sha256:
            raise ChecksumError(f"delta {row.id}: blob does not match its sha256 {row.sha256}")
        out[row.id] = row.blob
    missing = set(ids) - set(out)
    if missing:
        raise NotFound(f"deltas {sorted(missing)} not found")
    return out


def get_deltas(session: Session, ids: Sequence[int]) -> list[DeltaBlob]:
    rows = {d.id: d for d in session.scalars(select(DeltaBlob).where(DeltaBlob.id.in_(list(ids))))}
    return [rows[i] for i in ids if i in rows]


def edits_in_deltas(session: Session, delta_ids: Sequence[int]) -> dict[int, int]:
    """edit id -> the delta (among ``delta_ids``) that carries it."""
    out: dict[int, int] = {}
    for row in get_deltas(session, delta_ids):
        for eid in row.edit_ids:
            out[int(eid)] = row.id
    return out


def record_side_effects(session: Session, number: int, side_effects: dict[str, Any]) -> None:
    """Store the gate's measurement of version ``number`` against the base model."""
    row = session.get(Version, number)
    if row is not None:
        row.side_effects = side_effects


def record_weights_hash(session: Session, number: int, weights_hash: str) -> bool:
    """Store the hash of a version committed without one (see ``Worker._record_hash``); a hash
    already there is kept. Returns whether a row was filled."""
    row = session.get(Version, number)
    if row is None or row.weights_hash is not None:
        return False
    row.weights_hash = weights_hash
    return True
