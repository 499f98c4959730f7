"""The writer's transactions: commit an edit batch, revert an edit, restore a version.

Each one ends in a single database transaction (delta blob + version + edits' outcomes + jobs'
completion), a compare-and-set on the latest version and on every row it decides
(:class:`app.repository.FencedOff` when another writer got there first). The model runtime is
switched to the new state while its lock is held, and the version is marked live only after its
commit, so inference never sees an uncommitted or half-applied version; if anything fails, the
committed state is put back (:func:`rolled_back_on_failure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.crash_points import CrashPoints
from app.db import session_scope
from app.metrics import Metrics
from app.runtime import Delta, EditMeasure, EditRequest, ModelRuntime, make_request
from app.settings import Settings
from app.status import EditStatus, JobStatus, VersionKind
from app.tables import Edit, utcnow
from app.worker.replay import ActiveDeltas, DeltaCache, current_state

log = logging.getLogger("app.worker")


@contextmanager
def rolled_back_on_failure(runtime: ModelRuntime, committed: ActiveDeltas) -> Iterator[None]:
    """If the block raises, the runtime goes back to the committed state before re-raising."""
    try:
        yield
    except BaseException:
        runtime.set_state([d for _, d in committed], digest=False)
        raise


@dataclass
class EditOutcome:
    """What a gated (or ungated) batch decided: the edits to commit in ``delta`` and the rest."""

    delta: Delta | None
    good: list[int]
    bad: list[int]
    measures: dict[int, EditMeasure]
    failures: dict[int, list[str]]
    compute_s: float
    side_effects: dict[str, Any] | None = None  # the committed state against the base (the gate's)


@dataclass
class Replacement:
    """An edit replacing a live one: the old edit's delta is dropped from the state (``kept`` is
    what stays), the delta's other edits are ``recomputed`` into one delta that stays live."""

    old_id: int
    dropped: int  # the old edit's delta id
    mate_ids: list[int]
    mate_requests: list[EditRequest]
    kept: ActiveDeltas = field(default_factory=list)
    recomputed: Delta | None = None
    recompute_s: float = 0.0


class Transactions:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], runtime: ModelRuntime, cache: DeltaCache,
        metrics: Metrics, announce: Callable[[int], None], crash: CrashPoints | None = None,
    ) -> None:
        self.settings = settings
        self.crash = crash or CrashPoints()
        self.sessions = sessions
        self.runtime = runtime
        self.cache = cache
        self.metrics = metrics
        self.announce = announce

    # ---- edits ------------------------------------------------------------------------------
    def commit_edits(
        self, base_version: int, active: ActiveDeltas, outcome: EditOutcome, todo: list[tuple[int, int]],
        replace: Replacement | None = None,
    ) -> None:
        """One transaction: delta blob, version, every edit's outcome, every job's completion.

        ``todo`` holds the (job id, edit id) pairs of the batch. With ``replace`` (one edit that
        supersedes a live one) the version also drops the old edit's delta and carries its
        recomputed batch mates. The new version goes live (and is announced) before its weights
        are hashed; the hash is recorded right after (:meth:`record_hash`), so no client waits."""
        review = self.settings.review_mode
        good, bad, delta = outcome.good, outcome.bad, outcome.delta if outcome.good else None
        new_version: int | None = None
        new_active = list(active)
        blob = self.runtime.delta_to_bytes(delta) if delta is not None else b""
        latencies: list[float] = []
        with rolled_back_on_failure(self.runtime, active), session_scope(self.sessions) as s:
            now = utcnow()
            if delta is not None:
                note, changed = f"applied edits {good}", list(good)
                if replace is not None:
                    new_active = self._replaced(s, replace)
                    note += f"; edit {good[0]} supersedes edit {replace.old_id}"
                    if replace.mate_ids:
                        note += f"; re-applied edits {replace.mate_ids}"
                    changed += [replace.old_id, *replace.mate_ids]
                row = repo.add_delta(s, blob, good, self.runtime.delta_modules(delta), dict(delta.metadata),
                                     outcome.compute_s)
                self.cache.put(row.id, delta)
                new_active = new_active + [(row.id, delta)]
                self.runtime.set_state([d for _, d in new_active], digest=False)
                version = repo.create_version(
                    s, VersionKind.EDIT, [i for i, _ in new_active], None, created_by="worker",
                    note=note, edit_ids=sorted(changed), expect_latest=base_version,
                )
                version.side_effects = outcome.side_effects
                new_version = version.number
                if replace is not None:
                    self._mark_superseded(s, replace, good[0], new_version)
            for eid in good + bad:
                edit = repo.lock_edit(s, eid)
                if eid in good and edit.created_at is not None:
                    latencies.append((now - edit.created_at).total_seconds())
                if edit.status != EditStatus.RUNNING:
                    raise repo.FencedOff(f"edit {eid} is {edit.status}: another writer decided it")
                self._record_outcome(edit, outcome, new_version, new_active[-1][0] if eid in good else None, now)
            for job_id, _ in todo:
                repo.finish_job(s, job_id, new_version, now)
            self.crash.reach("edit_commit_open")
        if new_version is not None:
            self.crash.reach("after_edit_commit")
            self.runtime.mark_live(new_version, [i for i, _ in new_active], None)
            self.metrics.batch_size.observe(len(good))
            self.after_version(VersionKind.EDIT, new_version)
            self.record_hash(new_version)
        for seconds in latencies:
            self.metrics.edit_latency.observe(seconds)
        for _ in good:
            self.metrics.edits.labels(EditStatus.APPLIED).inc()
        for eid in bad:
            self.metrics.edits.labels(EditStatus.NEEDS_REVIEW if review else EditStatus.REJECTED).inc()
            for f in outcome.failures.get(eid, []):
                self.metrics.gate_rejections.labels(f.split(":", 1)[0].split(" ", 1)[0]).inc()
        log.info("edit batch done", extra={"applied": good, "rejected": bad, "version": new_version,
                                           "compute_s": round(outcome.compute_s, 3)})

    def _replaced(self, s: Session, replace: Replacement) -> ActiveDeltas:
        """The active deltas once the old edit's delta is gone: ``kept``, plus its batch mates'
        recomputed delta, stored here (in the committing transaction)."""
        active = list(replace.kept)
        if replace.recomputed is not None:
            rec = replace.recomputed
            row = repo.add_delta(s, self.runtime.delta_to_bytes(rec), replace.mate_ids, self.runtime.delta_modules(rec),
                                 {**rec.metadata, "recomputed_from": str(replace.dropped)}, replace.recompute_s)
            self.cache.put(row.id, rec)
            active.append((row.id, rec))
            for mate in replace.mate_ids:
                repo.lock_edit(s, mate).delta_id = row.id
        return active

    def _mark_superseded(self, s: Session, replace: Replacement, new_id: int, version: int) -> None:
        old = repo.lock_edit(s, replace.old_id)
        if old.status != EditStatus.APPLIED:
            raise repo.FencedOff(f"edit {old.id} is {old.status}: another writer decided it")
        old.status, old.superseded_by, old.reverted_version = EditStatus.SUPERSEDED, new_id, version
        repo.lock_edit(s, new_id).supersedes = replace.old_id
        for mate in replace.mate_ids:
            repo.lock_edit(s, mate).applied_version = version
        self.metrics.edits.labels(EditStatus.SUPERSEDED).inc()

    def _record_outcome(
        self, edit: Edit, outcome: EditOutcome, version: int | None, delta_id: int | None, now: object
    ) -> None:
        """Store one edit's measured numbers, gate verdict and resulting status."""
        passed = delta_id is not None
        m = outcome.measures.get(edit.id)
        numbers = m.as_dict() if m else {}
        numbers.update(
            gate={"passed": passed, "failures": outcome.failures.get(edit.id, []),
                  "enabled": self.settings.gate_enabled, "approved_by_review": edit.approved},
            batch_size=len(outcome.good) + len(outcome.bad), compute_s=outcome.compute_s,
        )
        edit.metrics = numbers
        self.metrics.observe_measure(numbers)
        edit.finished_at = now  # type: ignore[assignment]
        if passed:
            edit.status, edit.applied_version, edit.delta_id = EditStatus.APPLIED, version, delta_id
        else:
            edit.status = EditStatus.NEEDS_REVIEW if self.settings.review_mode else EditStatus.REJECTED
            edit.error = "; ".join(outcome.failures.get(edit.id, []))

    def record_hash(self, number: int) -> None:
        """Hash the live weights (version ``number``, committed without a hash) and store it.

        If the database is unreachable now, the hash is filled when the writer next replays the
        version (:func:`app.worker.replay.bootstrap_and_replay`); the version is committed either way."""
        digest = self.runtime.record_live_hash()
        try:
            with session_scope(self.sessions) as s:
                repo.record_weights_hash(s, number, digest)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the weights hash; it is filled at the next replay",
                        extra={"version": number, "error": str(exc)})

    # ---- revert and restore -----------------------------------------------------------------
    def revert(self, job_id: int) -> None:
        """New version without the edit. Its batch's delta is dropped; the batch's other applied
        edits are recomputed (on the model without that delta) into one new delta appended at the
        end, so they stay applied in the same new version."""
        with self.runtime.exclusive():
            with session_scope(self.sessions) as s:
                job = repo.lock_job(s, job_id)
                if job.status != JobStatus.PENDING:
                    return
                edit = repo.get_edit(s, job.edit_id)  # type: ignore[arg-type]
                base_version, active = current_state(s, self.cache)
                if edit.status != EditStatus.APPLIED or edit.delta_id not in [i for i, _ in active]:
                    job.status, job.finished_at = JobStatus.FAILED, utcnow()
                    job.error = f"edit {edit.id} is not applied (status {edit.status}); nothing to revert"
                    return
                dropped = edit.delta_id
                others = [
                    e for e in repo.get_edits(s, sorted(repo.edits_in_deltas(s, [dropped])))
                    if e.id != edit.id and e.status == EditStatus.APPLIED and e.delta_id == dropped
                ]
                back: int | None = None  # the edit this one superseded comes back
                if edit.supersedes is not None:
                    old = repo.get_edit(s, edit.supersedes)
                    if old.status == EditStatus.SUPERSEDED and old.superseded_by == edit.id:
                        others.append(old)
                        back = old.id
                other_reqs = [make_request(e.prompt, e.target, e.paraphrases, e.locality) for e in others]
                other_ids = [e.id for e in others]
                edit_id, requested_by, reason = edit.id, job.requested_by, job.reason
                job.status, job.started_at = JobStatus.RUNNING, utcnow()
            kept = [(i, d) for i, d in active if i != dropped]
            with rolled_back_on_failure(self.runtime, active):
                self.runtime.set_state([d for _, d in kept], digest=False)
                recomputed: Delta | None = None
                measures: list[EditMeasure] = []
                compute_s = 0.0
                if other_reqs:
                    t0 = time.perf_counter()
                    recomputed = self.runtime.compute(other_reqs)
                    compute_s = time.perf_counter() - t0
                    measures = self.runtime.measure(other_reqs, [d for _, d in kept] + [recomputed], None).edits
                with session_scope(self.sessions) as s:
                    new_active = list(kept)
                    if recomputed is not None:
                        row = repo.add_delta(
                            s, self.runtime.delta_to_bytes(recomputed), other_ids,
                            self.runtime.delta_modules(recomputed),
                            {**recomputed.metadata, "recomputed_from": str(dropped)}, compute_s,
                        )
                        self.cache.put(row.id, recomputed)
                        new_active.append((row.id, recomputed))
                    digest = self.runtime.set_state([d for _, d in new_active])
                    note = f"revert edit {edit_id} (dropped delta {dropped}"
                    note += f"; re-applied edits {other_ids})" if other_ids else ")"
                    if back is not None:
                        note += f"; edit {back}, which it superseded, is live again"
                    note += f"; reason: {reason}" if reason else ""
                    version = repo.create_version(
                        s, VersionKind.REVERT, [i for i, _ in new_active], digest, job_id=job_id,
                        created_by=requested_by, note=note, edit_ids=[edit_id] + other_ids,
                        expect_latest=base_version,
                    )
                    e = repo.get_edit(s, edit_id)
                    e.status, e.reverted_version = EditStatus.REVERTED, version.number
                    for oid, m in zip(other_ids, measures):
                        o = repo.get_edit(s, oid)
                        o.delta_id, o.applied_version = new_active[-1][0], version.number
                        if oid == back:
                            o.status, o.superseded_by, o.reverted_version = EditStatus.APPLIED, None, None
                        o.metrics = {**(o.metrics or {}), "after_recompute": m.as_dict()}
                    repo.finish_job(s, job_id, version.number)
                    number = version.number
            self.crash.reach("after_revert_commit")
            self.runtime.mark_live(number, [i for i, _ in new_active], digest)
        self.after_version(VersionKind.REVERT, number)
        self.metrics.edits.labels(EditStatus.REVERTED).inc()
        if back is not None:  # the edit it had superseded is applied again
            self.metrics.edits.labels(EditStatus.APPLIED).inc()

    def restore(self, job_id: int) -> None:
        """New version whose active set equals version n's: same deltas, same order, same bits."""
        with self.runtime.exclusive():
            with session_scope(self.sessions) as s:
                job = repo.lock_job(s, job_id)
                if job.status != JobStatus.PENDING:
                    return
                target = repo.get_version(s, job.target_version)  # type: ignore[arg-type]
                base_version, active = current_state(s, self.cache)
                wanted = self.cache.get_many(s, target.active_deltas)
                target_hash, target_number, requested_by = target.weights_hash, target.number, job.requested_by
                reason = job.reason
                job.status, job.started_at = JobStatus.RUNNING, utcnow()
            wanted_ids = [i for i, _ in wanted]
            with rolled_back_on_failure(self.runtime, active):
                digest = self.runtime.set_state([d for _, d in wanted])
                with session_scope(self.sessions) as s:
                    carried = repo.edits_in_deltas(s, wanted_ids)
                    note = f"restore version {target_number}"
                    if target_hash is not None and digest != target_hash:
                        note += f" (WARNING: weights hash {digest[:12]} differs from {target_hash[:12]})"
                    note += f"; reason: {reason}" if reason else ""
                    version = repo.create_version(
                        s, VersionKind.RESTORE, wanted_ids, digest, job_id=job_id, created_by=requested_by,
                        note=note, expect_latest=base_version,
                    )
                    changed: list[int] = []
                    for e in s.query(Edit).filter(Edit.status == EditStatus.APPLIED):
                        if e.id not in carried:
                            e.status, e.reverted_version = EditStatus.REVERTED, version.number
                            changed.append(e.id)
                    for e in repo.get_edits(s, sorted(carried)):
                        if e.status != EditStatus.APPLIED or e.delta_id != carried[e.id]:
                            e.status, e.delta_id, e.reverted_version = EditStatus.APPLIED, carried[e.id], None
                            e.superseded_by = None
                            e.applied_version = version.number
                            changed.append(e.id)
                    version.edit_ids = sorted(changed)
                    transitions = [EditStatus(e.status) for e in repo.get_edits(s, changed)]
                    repo.finish_job(s, job_id, version.number)
                    number = version.number
            self.crash.reach("after_revert_commit")
            self.runtime.mark_live(number, wanted_ids, digest)
        self.after_version(VersionKind.RESTORE, number)
        for status in transitions:  # a restore reverts and re-applies edits too
            self.metrics.edits.labels(status).inc()

    # ---- consolidation ------------------------------------------------------------------------
    def commit_consolidation(
        self, job_id: int, requested_by: str | None, base_version: int, active: ActiveDeltas, edit_ids: list[int],
        delta: Delta, compute_s: float, measures: dict[int, EditMeasure], side_effects: dict[str, Any] | None,
    ) -> None:
        """One transaction: the consolidated delta, a version whose only active delta it is, every
        live edit pointing at it (its numbers on it kept as ``after_consolidation``), the job."""
        old = [i for i, _ in active]
        blob = self.runtime.delta_to_bytes(delta)
        with rolled_back_on_failure(self.runtime, active), session_scope(self.sessions) as s:
            row = repo.add_delta(s, blob, edit_ids, self.runtime.delta_modules(delta),
                                 {**delta.metadata, "consolidated_from": ",".join(map(str, old))}, compute_s)
            self.cache.put(row.id, delta)
            self.runtime.set_state([delta], digest=False)
            version = repo.create_version(
                s, VersionKind.CONSOLIDATE, [row.id], None, job_id=job_id, created_by=requested_by,
                note=f"consolidated {len(edit_ids)} live edits of deltas {old} into delta {row.id}",
                edit_ids=list(edit_ids), expect_latest=base_version,
            )
            version.side_effects = side_effects
            for eid in edit_ids:
                e = repo.lock_edit(s, eid)
                if e.status != EditStatus.APPLIED:
                    raise repo.FencedOff(f"edit {eid} is {e.status}: another writer decided it")
                e.delta_id, e.applied_version = row.id, version.number
                if eid in measures:
                    e.metrics = {**(e.metrics or {}), "after_consolidation": measures[eid].as_dict()}
            repo.finish_job(s, job_id, version.number)
            number, new_id = version.number, row.id
            self.crash.reach("consolidation_open")
        self.crash.reach("after_consolidation_commit")
        self.runtime.mark_live(number, [new_id], None)
        self.after_version(VersionKind.CONSOLIDATE, number)
        self.record_hash(number)
        log.info("consolidated", extra={"version": number, "edits": len(edit_ids), "from_deltas": old})

    def after_version(self, kind: VersionKind, number: int) -> None:
        self.metrics.versions.labels(kind).inc()
        self.metrics.live_version.set(number)
        self.announce(number)
        log.info("version committed", extra={"kind": kind, "version": number})
