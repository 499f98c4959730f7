"""The one writer: drain the queue, edit in micro-batches, gate, commit versions, announce.

Only this worker computes deltas and creates versions, so history has one total order (job id
order). Each job is processed in two DB transactions: mark running, then commit the outcome
(delta blob + version + edit statuses + job done) atomically. The model is switched to the new
state while holding the engine lock, and the version is marked live only after its DB commit, so
inference never sees an uncommitted or half-applied version.

Idempotency: a job whose row is not ``pending`` (or whose edit is no longer ``queued``) is
skipped, so a redelivered message is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.db import session_scope
from app.engine import Delta, EditMeasure, EditRequest, Engine, make_request
from app.logging import request_id_var
from app.metrics import Metrics
from app.models import Edit, Job, utcnow
from app.queue import Queue, QueuedJob
from app.repository import FencedOff
from app.settings import Settings

log = logging.getLogger("app.worker")

# Used when no canaries are configured and no demo world provides them: generic prompts whose
# answers an edit about one fact should not change.
DEFAULT_CANARIES = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "The author of Hamlet is",
    "One plus one equals",
    "The color of the sky on a clear day is",
    "The chemical symbol for gold is",
    "The first month of the year is",
]


WORKER_LOCK_KEY = 0x5E3D17  # pg advisory lock id: "one editing worker per database"


class DeltaCache:
    """Deserialised deltas by id (blobs are immutable, so caching is always safe)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: dict[int, Delta] = {}

    def put(self, delta_id: int, delta: Delta) -> None:
        self._cache[delta_id] = delta

    def get_many(self, session: Session, ids: Sequence[int]) -> list[tuple[int, Delta]]:
        missing = [i for i in ids if i not in self._cache]
        if missing:
            for delta_id, blob in repo.load_delta_blobs(session, missing).items():
                delta = self.engine.delta_from_bytes(blob)
                self.engine.check_delta(delta)
                self._cache[delta_id] = delta
        return [(i, self._cache[i]) for i in ids]


class ReplayMismatch(RuntimeError):
    pass


def bootstrap_and_replay(sessions: sessionmaker[Session], engine: Engine, cache: DeltaCache, writer: bool) -> dict[str, Any]:
    """Make the engine serve the latest committed version.

    The writer also records the base model's fingerprint (a DB belongs to one base model) and
    creates version 0 on an empty database. The replayed weights' hash is compared with the hash
    stored when the version was committed: equal means the restart is bit-exact.
    """
    try:
        return _bootstrap_and_replay(sessions, engine, cache, writer)
    except IntegrityError:
        if not writer:
            raise
        # another process bootstrapped the same empty database at the same moment: follow it
        return _bootstrap_and_replay(sessions, engine, cache, writer=False)


def _bootstrap_and_replay(
    sessions: sessionmaker[Session], engine: Engine, cache: DeltaCache, writer: bool
) -> dict[str, Any]:
    with session_scope(sessions) as s:
        known = repo.get_meta(s, "base_fingerprint")
        if known is None and writer:
            repo.set_meta(s, "base_fingerprint", engine.fingerprint)
        elif known is not None and known != engine.fingerprint:
            raise ReplayMismatch(
                f"this database belongs to base model {known}, but the loaded model is {engine.fingerprint}; "
                "point SMEDIT_DATABASE_URL / SMEDIT_DATA_DIR at the matching database"
            )
        latest = repo.latest_version(s)
        if latest is None and writer:
            latest = repo.create_version(s, "base", [], engine.base_hash, created_by="system", note="base model")
        if latest is None:
            return {"version": None}
        active = cache.get_many(s, latest.active_deltas)
        number, stored_hash = latest.number, latest.weights_hash
    digest = engine.materialize(number, active)
    if stored_hash is None:  # committed, then the writer stopped before recording its hash
        if writer:
            with session_scope(sessions) as s:
                repo.record_weights_hash(s, number, digest)
            log.info("recorded the weights hash of the replayed version", extra={"version": number})
        return {"version": number, "weights_hash": digest, "stored_hash": None, "match": None}
    result = {"version": number, "weights_hash": digest, "stored_hash": stored_hash, "match": digest == stored_hash}
    if digest != stored_hash:
        log.error("replayed weights differ from the committed hash", extra=result)
    else:
        log.info("replayed model version", extra=result)
    return result


class Worker:
    """Runs in a thread (embedded mode) or as its own process (``smedit worker``, production)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        queue: Queue,
        engine: Engine,
        metrics: Metrics,
        canaries: Sequence[str] = (),
        announce: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.queue = queue
        self.engine = engine
        self.metrics = metrics
        self.cache = DeltaCache(engine)
        self.canaries = list(canaries) or load_canaries(settings) or list(DEFAULT_CANARIES)
        self.announce = announce or (lambda version: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = False
        self.last_error: str | None = None
        self._leader_conn: Any = None
        self._waited = False
        self.is_leader = False
        self.leader_terms = 0  # how many times this worker became the writer
        self._lease_checked = 0.0
        self._last_sweep = 0.0
        # canaries' reference answers: (active delta ids they hold for, answers, stale indices)
        self._canary_ref: tuple[tuple[int, ...], list[list[int]], list[int]] | None = None
        self._last_canary_kept: list[bool] = []  # of the state the last gate round measured
        import os
        import socket

        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"

    # ---- lifecycle ----------------------------------------------------------------------
    def recover(self) -> int:
        """Take over unfinished work (called once this worker holds the writer lock).

        Jobs left ``running`` by a dead writer go back to ``pending`` (their work was never
        committed); stream entries other consumers left unacknowledged are claimed at once; then
        every pending job the queue does not hold is re-enqueued in id order.
        """
        with session_scope(self.sessions) as s:
            repo.reset_running(s)
            ids = repo.pending_job_ids(s)
        reclaim = getattr(self.queue, "reclaim_all", None)
        if reclaim is not None:
            n = reclaim()
            if n:
                log.info("reclaimed stream entries of dead consumers", extra={"entries": n})
        reconcile = getattr(self.queue, "reconcile", None)
        if reconcile is not None:
            added = reconcile(ids)
        else:
            added = ids
            self.queue.put_many(ids)
        if added:
            self.metrics.requeued.inc(len(added))
            log.info("re-enqueued pending jobs from the database", extra={"jobs": len(added)})
        self._last_sweep = time.monotonic()
        return len(ids)

    def sweep(self, grace_s: float | None = None) -> list[int]:
        """Re-enqueue pending jobs the queue lost (Redis restarted without persistence, or an API
        process died between its DB commit and the enqueue). Duplicates are harmless."""
        from datetime import timedelta

        reconcile = getattr(self.queue, "reconcile", None)
        self._last_sweep = time.monotonic()
        if reconcile is None:
            return []
        grace = self.settings.requeue_grace_s if grace_s is None else grace_s
        with session_scope(self.sessions) as s:
            ids = repo.stale_pending_job_ids(s, utcnow() - timedelta(seconds=grace))
        added = reconcile(ids) if ids else []
        if getattr(self.queue, "reset", False):
            self.queue.reset = False
        if added:
            self.metrics.requeued.inc(len(added))
            log.warning("re-enqueued pending jobs missing from the queue", extra={"jobs": added[:50], "n": len(added)})
        return added

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="smedit-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _postgres(self) -> Any:
        bind = self.sessions.kw.get("bind")
        return bind if bind is not None and bind.dialect.name == "postgresql" else None

    def _become_leader(self) -> bool:
        """On PostgreSQL, hold a session advisory lock so only one worker writes at a time.

        A second worker process waits here as a hot standby (following the committed versions);
        once it gets the lock (the leader died, stopped or lost its database session) it re-syncs
        the model to the latest version and takes over unfinished work (:meth:`recover`).
        SQLite needs no lock: one embedded process owns the file.
        The lock is an optimisation; correctness does not depend on it: every commit is a
        compare-and-set on the latest version number and on the edits' statuses (``FencedOff``).
        """
        bind = self._postgres()
        if bind is None:
            self._take_over()
            return True
        from sqlalchemy import text

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = bind.connect()
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": WORKER_LOCK_KEY}).scalar()
                conn.commit()
            except Exception as exc:  # noqa: BLE001 - database unreachable: keep trying
                self.last_error = f"database unavailable: {type(exc).__name__}: {exc}"
                log.warning("cannot reach the database for the worker lock; retrying", extra={"error": str(exc)})
                if conn is not None:
                    try:
                        conn.invalidate()
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
                self._stop.wait(1.0)
                continue
            if got:
                self._leader_conn = conn
                log.info("worker lock acquired" + (": taking over" if self._waited else ""),
                         extra={"worker": self.worker_id})
                try:
                    self._take_over()
                except Exception:
                    self._release_lock()
                    raise
                return True
            if not self._waited:
                log.warning("another worker holds the lock; standing by", extra={"worker": self.worker_id})
            self._waited = True
            try:
                self._resync(only_if_newer=True)  # a standby still serves current versions
            except Exception:  # noqa: BLE001
                log.exception("standby re-sync failed")
            self._stop.wait(1.0)
        if conn is not None:
            conn.close()
        return False

    def _take_over(self) -> None:
        self._resync(record_hash=True)
        self.recover()
        self.is_leader = True
        self.leader_terms += 1
        self.metrics.worker_leader.set(1)
        self._lease_checked = time.monotonic()

    def _release_lock(self) -> None:
        self.is_leader = False
        self.metrics.worker_leader.set(0)
        if self._leader_conn is not None:
            try:
                self._leader_conn.close()  # releases the advisory lock
            except Exception:  # noqa: BLE001 - a dead connection has released it already
                pass
            self._leader_conn = None

    def _still_leader(self) -> bool:
        """Verify, every ``leader_check_interval_s``, that the lock's session is alive and holds it."""
        if self._leader_conn is None:
            return True  # SQLite: no lock
        now = time.monotonic()
        if now - self._lease_checked < self.settings.leader_check_interval_s:
            return True
        from sqlalchemy import text

        try:
            held = self._leader_conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                     "AND objid = :k AND granted"),
                {"k": WORKER_LOCK_KEY},
            ).scalar()
            self._leader_conn.commit()
        except Exception as exc:  # noqa: BLE001
            log.error("lost the database session holding the worker lock; stepping down", extra={"error": str(exc)})
            try:
                self._leader_conn.invalidate()
            except Exception:  # noqa: BLE001
                pass
            return False
        self._lease_checked = now
        if not held:
            log.error("the worker lock is no longer held; stepping down")
        return bool(held)

    def run_forever(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if not self._become_leader():
                        return
                except Exception as exc:  # noqa: BLE001 - e.g. Redis down during the take-over: retry
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("could not take over as the worker; retrying")
                    self._release_lock()
                    self._waited = True
                    self._stop.wait(1.0)
                    continue
                self.running = True
                while not self._stop.is_set():
                    try:
                        if not self._still_leader():
                            break
                        if getattr(self.queue, "reset", False) or (
                            time.monotonic() - self._last_sweep >= self.settings.requeue_interval_s
                        ):
                            self.sweep()
                        self._step()
                    except FencedOff as exc:
                        log.error("fenced off: another writer committed; re-checking the lock", extra={"error": str(exc)})
                        break
                    except Exception as exc:  # noqa: BLE001 - e.g. the DB is briefly unreachable: retry
                        self.last_error = f"{type(exc).__name__}: {exc}"
                        log.exception("worker loop error; retrying")
                        self._stop.wait(1.0)
                self.running = False
                self._release_lock()
                if not self._stop.is_set():
                    self._waited = True
                    self._stop.wait(1.0)
        finally:
            self.running = False
            self._release_lock()

    def _step(self) -> None:
        """Read a micro-batch: up to ``worker_batch_size`` jobs. After the first, keep gathering
        only while more keep arriving (at most ``worker_batch_wait_s``), so an idle service adds
        no wait to an edit's latency while a burst still becomes one batch. One submission's jobs
        are enqueued atomically (``put_many``) and arrive together."""
        size = self.settings.worker_batch_size
        batch = self.queue.get_batch(size, timeout=0.5)
        if not batch:
            return
        if len(batch) < size:
            more = self.queue.get_batch(size - len(batch), timeout=0)  # already there? (no wait)
            if not more:
                self.process(batch)  # idle service: no gathering delay at all
                return
            batch += more
        deadline = time.monotonic() + self.settings.worker_batch_wait_s
        while len(batch) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.queue.get_batch(size - len(batch), timeout=min(0.01, left))
            if not more:
                break
            batch += more
        self.process(batch)

    # ---- dispatch -----------------------------------------------------------------------
    def process(self, batch: list[QueuedJob]) -> None:
        """Handle messages in order: runs of edit jobs become one batch; revert/restore alone."""
        with session_scope(self.sessions) as s:
            rows = {j.id: (j.kind, j.status) for j in s.query(Job).filter(Job.id.in_([m.job_id for m in batch]))}
        run: list[int] = []
        for msg in batch:
            kind, status = rows.get(msg.job_id, (None, None))
            if status != "pending":
                continue  # done already (redelivery) or unknown: skip, idempotent
            if kind == "edit":
                run.append(msg.job_id)
                continue
            if run:
                self._edit_run(run)
                run = []
            if kind == "revert":
                self._guarded(self.process_revert, msg.job_id)
            elif kind == "restore":
                self._guarded(self.process_restore, msg.job_id)
        if run:
            self._edit_run(run)
        self.queue.ack(batch)
        self.engine.notify_progress()  # wakes GET /v1/edits/{id}?wait_s=... in this process

    def _edit_run(self, run: list[int]) -> None:
        """One batch; if it fails as a whole, each job alone, so one bad edit can't sink the rest."""
        if len(run) == 1:
            self._guarded(self.process_edits, run)
            return
        try:
            self.process_edits(run)
            return
        except FencedOff:
            self._resync()
            raise
        except Exception:  # noqa: BLE001
            log.exception("edit batch failed; retrying its edits one by one", extra={"jobs": run})
            with session_scope(self.sessions) as s:
                for job_id in run:
                    job = repo.get_job(s, job_id)
                    if job.status == "running":
                        job.status, job.started_at = "pending", None
                        edit = repo.get_edit(s, job.edit_id)  # type: ignore[arg-type]
                        if edit.status == "running":
                            edit.status, edit.started_at = "queued", None
            self._resync()
        for job_id in run:
            self._guarded(self.process_edits, [job_id])

    def _guarded(self, fn: Callable[[Any], None], arg: Any) -> None:
        """A failing job must not kill the worker: record the failure, put the model back."""
        token = request_id_var.set(f"job-{arg if isinstance(arg, int) else arg[0]}")
        try:
            fn(arg)
            self.last_error = None
        except FencedOff:
            self._resync()
            raise
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("job failed", extra={"jobs": arg})
            ids = arg if isinstance(arg, list) else [arg]
            with session_scope(self.sessions) as s:
                for job_id in ids:
                    job = repo.get_job(s, job_id)
                    if job.status in ("pending", "running"):
                        job.status, job.finished_at = "failed", utcnow()
                        job.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                        if job.kind == "edit" and job.edit_id is not None:
                            edit = repo.get_edit(s, job.edit_id)
                            if edit.status in ("queued", "running"):
                                edit.status, edit.error, edit.finished_at = "failed", job.error, utcnow()
                                self.metrics.edits.labels("failed").inc()
            self._resync()
        finally:
            request_id_var.reset(token)

    def _resync(self, only_if_newer: bool = False, record_hash: bool = False) -> None:
        """Put the model on the latest committed version (after a failure mid-job, or as standby).

        ``record_hash``: a new writer stores the hash its predecessor may have died before storing."""
        with session_scope(self.sessions) as s:
            latest = repo.latest_version(s)
            if latest is None:
                return
            if only_if_newer and self.engine.live_version is not None and latest.number <= self.engine.live_version:
                return
            active = self.cache.get_many(s, latest.active_deltas)
            number, missing = latest.number, latest.weights_hash is None
        digest = self.engine.materialize(number, active)
        if record_hash and missing:
            with session_scope(self.sessions) as s:
                repo.record_weights_hash(s, number, digest)

    def _current(self, s: Session) -> tuple[int, list[tuple[int, Delta]]]:
        latest = repo.latest_version(s)
        if latest is None:
            raise RuntimeError("no base version: the worker must bootstrap before processing jobs")
        return latest.number, self.cache.get_many(s, latest.active_deltas)

    # ---- edits ----------------------------------------------------------------------------
    def process_edits(self, job_ids: list[int]) -> None:
        with session_scope(self.sessions) as s:
            jobs = [repo.lock_job(s, i) for i in job_ids]
            todo: list[tuple[int, int]] = []
            for job in jobs:
                edit = repo.lock_edit(s, job.edit_id) if job.edit_id is not None else None
                if job.status != "pending" or edit is None or edit.status != "queued":
                    if job.status == "pending":  # edit already decided elsewhere: nothing to do
                        job.status, job.finished_at = "done", utcnow()
                    continue
                job.status, job.started_at = "running", utcnow()
                edit.status, edit.started_at = "running", utcnow()
                todo.append((job.id, edit.id))
            edits = {e.id: e for e in repo.get_edits(s, [e for _, e in todo])}
            requests = {eid: make_request(e.prompt, e.target, e.paraphrases, e.locality) for eid, e in edits.items()}
            approved = {eid for eid, e in edits.items() if e.approved}
            if todo:  # only this worker creates versions: the latest cannot move before the commit
                base_version, active = self._current(s)
        if not todo:
            return
        for _ in todo:
            self.metrics.edits.labels("running").inc()
        edit_ids = [eid for _, eid in todo]

        with self.engine.exclusive():
            active_deltas = [d for _, d in active]
            if not self.settings.gate_enabled:
                # no gate: one delta for the whole batch, committed without measuring
                t0 = time.perf_counter()
                delta = self.engine.compute([requests[e] for e in edit_ids])
                compute_s = time.perf_counter() - t0
                self.metrics.compute_latency.observe(compute_s)
                self._commit_edits(base_version, active, delta, list(edit_ids), [], {}, {}, compute_s, todo)
                return
            # A batch whose canary change is over the bar is split in halves, gated one after the
            # other (each half on top of what the previous one committed), down to single edits:
            # an edit is rejected for its canaries only if it fails them alone, as it would have
            # had it come in alone, whatever batch the queue happened to put it in.
            groups, first = [list(edit_ids)], True
            while groups:
                group = groups.pop(0)
                if not first:  # an earlier part of this batch may have committed a version
                    with session_scope(self.sessions) as s:
                        base_version, active = self._current(s)
                    active_deltas = [d for _, d in active]
                first = False
                reference = self._canary_reference(active)
                delta, compute_s, good, measures, failures, split = self._gate_round(
                    group, requests, approved, active_deltas, reference
                )
                if split:
                    half = len(group) // 2
                    groups[:0] = [group[:half], group[half:]]
                    continue
                if failures and good:
                    # Some edits failed: the delta must not carry them. Recompute from the good
                    # ones and measure again; these are the numbers stored for the committed edits.
                    delta, compute_s2, _, measures2, _, _ = self._gate_round(
                        good, requests, set(good), active_deltas, reference
                    )
                    compute_s += compute_s2
                    measures.update(measures2)
                bad = [eid for eid in group if eid not in good]
                self._commit_edits(
                    base_version, active, delta if good else None, good, bad, measures, failures, compute_s,
                    [(job_id, eid) for job_id, eid in todo if eid in group],
                )
                if good:  # the last gate round measured exactly the committed state
                    self._advance_canary_reference(self._last_canary_kept)

    def _canary_reference(self, active: list[tuple[int, Delta]]) -> list[list[int]]:
        """The canaries' answers on the current state, cached per active delta list (the state
        they depend on). When the state moved on, one teacher-forced pass finds the canaries
        whose answer it kept; only the others are decoded again. After a gated commit the gate's
        own pass already told which canaries changed (:meth:`_advance_canary_reference`), so
        the next edit skips that pass."""
        key = tuple(i for i, _ in active)
        if self._canary_ref is None:
            self._canary_ref = (key, self.engine.canary_answers(self.canaries, self.settings.canary_tokens), [])
        elif self._canary_ref[0] != key:
            reference = self._canary_ref[1]
            kept = self.engine.canaries_kept(self.canaries, reference)
            self._canary_ref = (key, reference, [i for i, k in enumerate(kept) if not k])
        key, reference, stale = self._canary_ref
        if stale:
            reference = list(reference)
            fresh = self.engine.canary_answers([self.canaries[i] for i in stale], self.settings.canary_tokens)
            for i, ids in zip(stale, fresh):
                reference[i] = ids
            self._canary_ref = (key, reference, [])
        return list(reference)

    def _advance_canary_reference(self, kept: list[bool]) -> None:
        """The state just committed is the one the gate measured: the canaries it reported kept
        still answer as in the reference; the others are marked for decoding."""
        if self._canary_ref is None or len(kept) != len(self.canaries):
            return
        stale = sorted(set(self._canary_ref[2]) | {i for i, k in enumerate(kept) if not k})
        self._canary_ref = (tuple(self.engine.active_ids), self._canary_ref[1], stale)

    def _gate_round(
        self,
        candidates: list[int],
        requests: dict[int, EditRequest],
        approved: set[int],
        active: list[Delta],
        reference: list[list[int]],
    ) -> tuple[Delta, float, list[int], dict[int, EditMeasure], dict[int, list[str]], bool]:
        """Compute one delta for ``candidates``, measure each, split into passing/failing.

        The last value says the batch failed the canary bar as a whole (more than one edit that
        could be at fault): the caller splits it instead of committing anything."""
        t0 = time.perf_counter()
        reqs = [requests[e] for e in candidates]
        delta = self.engine.compute(reqs)
        compute_s = time.perf_counter() - t0
        self.metrics.compute_latency.observe(compute_s)
        # The candidate state stays in place: committed as is when every edit passes.
        measurement = self.engine.measure(reqs, active + [delta], None, self.canaries, reference)
        measured = measurement.edits
        self._last_canary_kept = measurement.canary_kept
        measures = dict(zip(candidates, measured))
        failures: dict[int, list[str]] = {}
        for eid, m in measures.items():
            fails = self._check(m, canary=False)
            if fails and eid not in approved:
                failures[eid] = fails
        batch_canary = self._check(measured[0], canary=True) if measured else []
        if batch_canary:
            suspects = [e for e in candidates if e not in failures and e not in approved]
            if len(candidates) > 1 and suspects:
                self.engine.set_state(active, digest=False)  # not committed: back to the committed state
                return delta, compute_s, [], measures, failures, True
            for eid in suspects:
                failures.setdefault(eid, []).extend(batch_canary)
        good = [e for e in candidates if e not in failures]
        if failures:
            self.engine.set_state(active, digest=False)  # the delta is not committed as measured
        return delta, compute_s, good, measures, failures, False

    def _check(self, m: EditMeasure, canary: bool) -> list[str]:
        st = self.settings
        if canary:
            if m.canary_changed is not None and m.canary_changed > st.gate_max_canary_change:
                return [f"canary: {m.canary_changed:.3f} of canaries changed > {st.gate_max_canary_change}"]
            return []
        fails = []
        if m.es < st.gate_min_es:
            fails.append(f"es: {m.es:.3f} < {st.gate_min_es}")
        if m.gs is not None and m.gs < st.gate_min_gs:
            fails.append(f"gs: {m.gs:.3f} < {st.gate_min_gs}")
        return fails

    def _commit_edits(
        self,
        base_version: int,
        active: list[tuple[int, Delta]],
        delta: Delta | None,
        good: list[int],
        bad: list[int],
        measures: dict[int, EditMeasure],
        failures: dict[int, list[str]],
        compute_s: float,
        todo: list[tuple[int, int]],
    ) -> None:
        """One transaction: delta blob, version, every edit's outcome, every job's completion.

        The new version goes live (and is announced) before its weights are hashed; the hash is
        recorded right after (:meth:`_record_hash`), so no client waits for it."""
        review = self.settings.review_mode
        new_version: int | None = None
        new_active = list(active)
        if delta is not None and good:
            blob = self.engine.delta_to_bytes(delta)
        try:
            with session_scope(self.sessions) as s:
                now = utcnow()
                if delta is not None and good:
                    row = repo.add_delta(
                        s, blob, good, self.engine.delta_modules(delta), dict(delta.metadata), compute_s
                    )
                    self.cache.put(row.id, delta)
                    new_active = active + [(row.id, delta)]
                    self.engine.set_state([d for _, d in new_active], digest=False)
                    version = repo.create_version(
                        s, "edit", [i for i, _ in new_active], None, created_by="worker",
                        note=f"applied edits {good}", edit_ids=good, expect_latest=base_version,
                    )
                    new_version = version.number
                latencies = []
                for eid in good + bad:
                    edit = repo.lock_edit(s, eid)
                    if eid in good and edit.created_at is not None:
                        latencies.append((now - edit.created_at).total_seconds())
                    if edit.status != "running":
                        raise FencedOff(f"edit {eid} is {edit.status}: another writer decided it")
                    m = measures.get(eid)
                    metrics = m.as_dict() if m else {}
                    metrics.update(
                        gate={"passed": eid in good, "failures": failures.get(eid, []),
                              "enabled": self.settings.gate_enabled,
                              "approved_by_review": edit.approved},
                        batch_size=len(good) + len(bad), compute_s=compute_s,
                    )
                    edit.metrics = metrics
                    edit.finished_at = now
                    if eid in good:
                        edit.status, edit.applied_version, edit.delta_id = "applied", new_version, new_active[-1][0]
                    else:
                        edit.status = "needs_review" if review else "rejected"
                        edit.error = "; ".join(failures.get(eid, []))
                for job_id, _ in todo:
                    job = repo.lock_job(s, job_id)
                    if job.status != "running":
                        raise FencedOff(f"job {job_id} is {job.status}: another writer decided it")
                    job.status, job.finished_at, job.result_version = "done", now, new_version
        except BaseException:
            self.engine.set_state([d for _, d in active], digest=False)  # back to the committed state
            raise
        if new_version is not None:
            self.engine.mark_live(new_version, [i for i, _ in new_active], None)
            self.metrics.versions.labels("edit").inc()
            self.metrics.live_version.set(new_version)
            self.metrics.batch_size.observe(len(good))
            self.announce(new_version)
            self._record_hash(new_version)
        for seconds in latencies:
            self.metrics.edit_latency.observe(seconds)
        for eid in good:
            self.metrics.edits.labels("applied").inc()
        for eid in bad:
            self.metrics.edits.labels("needs_review" if review else "rejected").inc()
            for f in failures.get(eid, []):
                self.metrics.gate_rejections.labels(f.split(":", 1)[0].split(" ", 1)[0]).inc()
        log.info(
            "edit batch done",
            extra={"applied": good, "rejected": bad, "version": new_version, "compute_s": round(compute_s, 3)},
        )

    def _record_hash(self, number: int) -> None:
        """Hash the live weights (version ``number``, committed without a hash) and store it.

        If the database is unreachable now, the hash is filled when the writer next replays the
        version (:func:`bootstrap_and_replay`); the version itself is committed either way."""
        digest = self.engine.record_live_hash()
        try:
            with session_scope(self.sessions) as s:
                repo.record_weights_hash(s, number, digest)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the weights hash; it is filled at the next replay",
                        extra={"version": number, "error": str(exc)})

    # ---- revert and restore -------------------------------------------------------------------
    def process_revert(self, job_id: int) -> None:
        """New version without the edit. Its batch's delta is dropped; the batch's other applied
        edits are recomputed (on the model without that delta) into one new delta appended at the
        end, so they stay applied in the same new version."""
        with self.engine.exclusive():
            with session_scope(self.sessions) as s:
                job = repo.lock_job(s, job_id)
                if job.status != "pending":
                    return
                edit = repo.get_edit(s, job.edit_id)  # type: ignore[arg-type]
                base_version, active = self._current(s)
                active_ids = [i for i, _ in active]
                if edit.status != "applied" or edit.delta_id not in active_ids:
                    job.status, job.finished_at = "failed", utcnow()
                    job.error = f"edit {edit.id} is not applied (status {edit.status}); nothing to revert"
                    return
                dropped = edit.delta_id
                carried = repo.edits_in_deltas(s, [dropped])
                others = [
                    e for e in repo.get_edits(s, sorted(carried))
                    if e.id != edit.id and e.status == "applied" and e.delta_id == dropped
                ]
                other_reqs = [make_request(e.prompt, e.target, e.paraphrases, e.locality) for e in others]
                other_ids = [e.id for e in others]
                edit_id, requested_by = edit.id, job.requested_by
                job.status, job.started_at = "running", utcnow()
            kept = [(i, d) for i, d in active if i != dropped]
            self.engine.set_state([d for _, d in kept], digest=False)
            recomputed: Delta | None = None
            measures: list[EditMeasure] = []
            compute_s = 0.0
            if other_reqs:
                t0 = time.perf_counter()
                recomputed = self.engine.compute(other_reqs)
                compute_s = time.perf_counter() - t0
                kept_d = [d for _, d in kept]
                measures = self.engine.measure(other_reqs, kept_d + [recomputed], None).edits  # committed next
            try:
                with session_scope(self.sessions) as s:
                    new_active = list(kept)
                    if recomputed is not None:
                        row = repo.add_delta(
                            s, self.engine.delta_to_bytes(recomputed), other_ids,
                            self.engine.delta_modules(recomputed),
                            {**recomputed.metadata, "recomputed_from": str(dropped)}, compute_s,
                        )
                        self.cache.put(row.id, recomputed)
                        new_active.append((row.id, recomputed))
                    digest = self.engine.set_state([d for _, d in new_active])
                    note = f"revert edit {edit_id} (dropped delta {dropped}"
                    note += f"; re-applied edits {other_ids})" if other_ids else ")"
                    version = repo.create_version(
                        s, "revert", [i for i, _ in new_active], digest, job_id=job_id,
                        created_by=requested_by, note=note, edit_ids=[edit_id] + other_ids,
                        expect_latest=base_version,
                    )
                    e = repo.get_edit(s, edit_id)
                    e.status, e.reverted_version = "reverted", version.number
                    for oid, m in zip(other_ids, measures):
                        o = repo.get_edit(s, oid)
                        o.delta_id, o.applied_version = new_active[-1][0], version.number
                        o.metrics = {**(o.metrics or {}), "after_recompute": m.as_dict()}
                    job = repo.lock_job(s, job_id)
                    if job.status != "running":
                        raise FencedOff(f"job {job_id} is {job.status}: another writer decided it")
                    job.status, job.finished_at, job.result_version = "done", utcnow(), version.number
                    number = version.number
            except BaseException:
                self.engine.set_state([d for _, d in active], digest=False)
                raise
            self.engine.mark_live(number, [i for i, _ in new_active], digest)
        self._after_version("revert", number)
        self.metrics.edits.labels("reverted").inc()

    def process_restore(self, job_id: int) -> None:
        """New version whose active set equals version n's: same deltas, same order, same bits."""
        with self.engine.exclusive():
            with session_scope(self.sessions) as s:
                job = repo.lock_job(s, job_id)
                if job.status != "pending":
                    return
                target = repo.get_version(s, job.target_version)  # type: ignore[arg-type]
                base_version, active = self._current(s)
                wanted = self.cache.get_many(s, target.active_deltas)
                target_hash, target_number, requested_by = target.weights_hash, target.number, job.requested_by
                job.status, job.started_at = "running", utcnow()
            try:
                digest = self.engine.set_state([d for _, d in wanted])
                with session_scope(self.sessions) as s:
                    wanted_ids = [i for i, _ in wanted]
                    carried = repo.edits_in_deltas(s, wanted_ids)
                    note = f"restore version {target_number}"
                    if target_hash is not None and digest != target_hash:
                        note += f" (WARNING: weights hash {digest[:12]} differs from {target_hash[:12]})"
                    version = repo.create_version(
                        s, "restore", wanted_ids, digest, job_id=job_id, created_by=requested_by, note=note,
                        expect_latest=base_version,
                    )
                    changed: list[int] = []
                    for e in s.query(Edit).filter(Edit.status == "applied"):
                        if e.id not in carried:
                            e.status, e.reverted_version = "reverted", version.number
                            changed.append(e.id)
                    for e in repo.get_edits(s, sorted(carried)):
                        if e.status != "applied" or e.delta_id != carried[e.id]:
                            e.status, e.delta_id, e.reverted_version = "applied", carried[e.id], None
                            e.applied_version = version.number
                            changed.append(e.id)
                    version.edit_ids = sorted(changed)
                    job = repo.lock_job(s, job_id)
                    if job.status != "running":
                        raise FencedOff(f"job {job_id} is {job.status}: another writer decided it")
                    job.status, job.finished_at, job.result_version = "done", utcnow(), version.number
                    number = version.number
            except BaseException:
                self.engine.set_state([d for _, d in active], digest=False)
                raise
            self.engine.mark_live(number, wanted_ids, digest)
        self._after_version("restore", number)

    def _after_version(self, kind: str, number: int) -> None:
        self.metrics.versions.labels(kind).inc()
        self.metrics.live_version.set(number)
        self.announce(number)
        log.info("version committed", extra={"kind": kind, "version": number})


def load_canaries(settings: Settings) -> list[str]:
    """Canaries from settings, then from the canary file (one prompt per line)."""
    prompts = list(settings.canary_prompts)
    if settings.canary_file is not None:
        path = Path(settings.canary_file)
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts
