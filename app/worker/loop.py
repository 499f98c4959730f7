"""The one writer: drain the queue, edit in micro-batches, gate, commit versions, announce.

Only this worker computes deltas and creates versions, so history has one total order (job id
order). Each job is processed in two DB transactions: mark running, then commit the outcome
(:mod:`app.worker.transactions`). Idempotency: a job whose row is not ``pending`` (or whose edit
is no longer ``queued``) is skipped, so a redelivered message is harmless.

Runs in a thread (embedded mode, or next to an API in ``--role all``) or as its own process
(``smedit worker``, production); the code path is the same.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.crash_points import CrashPoints
from app.db import session_scope
from app.errors import dependency_of
from app.logging import request_id_var
from app.metrics import Metrics
from app.queue import Queue, QueuedJob
from app.repository import FencedOff
from app.runtime import ModelRuntime
from app.settings import Settings
from app.status import EditStatus, JobKind, JobStatus
from app.tables import Job, utcnow
from app.worker.canaries import load_canaries
from app.worker.edit_batches import EditBatches
from app.worker.gate import Gate
from app.worker.leader import WriterLock
from app.worker.replay import DeltaCache, resync
from app.worker.transactions import Transactions

log = logging.getLogger("app.worker")


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        queue: Queue,
        runtime: ModelRuntime,
        metrics: Metrics,
        canaries: Sequence[str] = (),
        announce: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.queue = queue
        self.runtime = runtime
        self.metrics = metrics
        self.cache = DeltaCache(runtime)
        self.gate = Gate(settings, runtime, metrics, list(canaries) or load_canaries(settings))
        metrics.side_effect_budget.set(settings.side_effect_budget)
        self.crash = CrashPoints(settings.crash_at)
        self.transactions = Transactions(settings, sessions, runtime, self.cache, metrics,
                                         announce or (lambda version: None), self.crash)
        self.edits = EditBatches(settings, sessions, runtime, self.cache, self.gate, self.transactions, metrics,
                                 enqueue=queue.put_many)
        self.process_edits = self.edits.process
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.lock = WriterLock(sessions, settings.leader_check_interval_s, self.worker_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = False
        self.last_error: str | None = None
        self.is_leader = False
        self.leader_terms = 0  # how many times this worker became the writer
        self._last_sweep = 0.0

    @property
    def canaries(self) -> list[str]:
        return self.gate.canaries

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="smedit-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Become the writer, process micro-batches while the lock holds, step down and retry."""
        try:
            while not self._stop.is_set():
                try:
                    if not self._become_leader():
                        return
                except Exception as exc:  # noqa: BLE001 - e.g. Redis down during the take-over: retry
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("could not take over as the worker; retrying")
                    self._step_down()
                    self.lock.waited = True
                    self._stop.wait(1.0)
                    continue
                self.running = True
                self._serve_while_leader()
                self.running = False
                self._step_down()
                if not self._stop.is_set():
                    self.lock.waited = True
                    self._stop.wait(1.0)
        finally:
            self.running = False
            self._step_down()

    def _serve_while_leader(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.lock.still_held():
                    return
                if getattr(self.queue, "reset", False) or (
                    time.monotonic() - self._last_sweep >= self.settings.requeue_interval_s
                ):
                    self.sweep()
                self._step()
            except FencedOff as exc:
                log.error("fenced off: another writer committed; re-checking the lock", extra={"error": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - e.g. Redis is briefly unreachable: retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                if dependency_of(exc) == "database":
                    # Mid-job: what it wrote was rolled back, its rows may still say running. Step
                    # down; the next take-over (this worker's or another's) puts them back to pending.
                    log.error("database unreachable during a job; stepping down", extra={"error": str(exc)[:300]})
                    return
                log.exception("worker loop error; retrying")
                self._stop.wait(1.0)

    def _become_leader(self) -> bool:
        def unreachable(message: str) -> None:
            self.last_error = message

        return self.lock.acquire(self._stop, on_wait=lambda: self._resync(only_if_newer=True),
                                 on_unreachable=unreachable, on_acquired=self._take_over)

    def _take_over(self) -> None:
        self._resync(record_hash=True)
        self.recover()
        self.edits.record_side_effects(only_if_missing=True)
        self.is_leader = True
        self.leader_terms += 1
        self.metrics.worker_leader.set(1)

    def _step_down(self) -> None:
        self.is_leader = False
        self.metrics.worker_leader.set(0)
        self.lock.release()

    def _resync(self, only_if_newer: bool = False, record_hash: bool = False) -> None:
        resync(self.sessions, self.runtime, self.cache, only_if_newer=only_if_newer, record_hash=record_hash)

    # ---- recovery -----------------------------------------------------------------------------
    def recover(self) -> int:
        """Take over unfinished work (called once this worker holds the writer lock).

        Jobs left ``running`` by a dead writer go back to ``pending`` (their work was never
        committed); stream entries other consumers left unacknowledged are claimed at once; then
        every pending job the queue does not hold is re-enqueued in id order.
        """
        with session_scope(self.sessions) as s:
            repo.reset_running(s)
            ids = repo.pending_job_ids(s)
        self.crash.reach("during_recovery")
        n = self.queue.reclaim_all()
        if n:
            log.info("reclaimed jobs handed out and never acknowledged", extra={"entries": n})
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

    # ---- the micro-batch loop -------------------------------------------------------------------
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

    def process(self, batch: list[QueuedJob]) -> None:
        """Handle messages in order: runs of edit jobs become one batch; revert/restore alone."""
        with session_scope(self.sessions) as s:
            rows = {j.id: (j.kind, j.status) for j in s.query(Job).filter(Job.id.in_([m.job_id for m in batch]))}
        run: list[int] = []
        fresh = any(rows.get(m.job_id, (None, None))[1] == JobStatus.PENDING for m in batch)
        for msg in batch:
            kind, status = rows.get(msg.job_id, (None, None))
            if status != JobStatus.PENDING:
                continue  # done already (redelivery) or unknown: skip, idempotent
            if kind == JobKind.EDIT:
                run.append(msg.job_id)
                continue
            if run:
                self._edit_run(run)
                run = []
            if kind == JobKind.REVERT:
                self._guarded(lambda: self.transactions.revert(msg.job_id), [msg.job_id])
            elif kind == JobKind.RESTORE:
                self._guarded(lambda: self.transactions.restore(msg.job_id), [msg.job_id])
            elif kind == JobKind.CONSOLIDATE:
                self._guarded(lambda: self.edits.consolidate(msg.job_id), [msg.job_id])
            if kind in (JobKind.REVERT, JobKind.RESTORE):
                self._guarded(self.edits.record_side_effects, [msg.job_id])
        if run:
            self._edit_run(run)
        if fresh:
            self.crash.reach("before_ack")
        self.queue.ack(batch)
        self.runtime.notify_progress()  # wakes GET /v1/edits/{id}?wait_s=... in this process

    def _edit_run(self, run: list[int]) -> None:
        """One batch; if it fails as a whole, each job alone, so one bad edit can't sink the rest."""
        if len(run) == 1:
            self._guarded(lambda: self.process_edits(run), run)
            return
        try:
            self.process_edits(run)
            return
        except FencedOff:
            self._resync()
            raise
        except Exception as exc:  # noqa: BLE001
            if dependency_of(exc) == "database":
                raise  # not the batch's fault: the take-over after the outage runs it again
            log.exception("edit batch failed; retrying its edits one by one", extra={"jobs": run})
            with session_scope(self.sessions) as s:
                for job_id in run:
                    job = repo.get_job(s, job_id)
                    if job.status == JobStatus.RUNNING:
                        job.status, job.started_at = JobStatus.PENDING, None
                        edit = repo.get_edit(s, job.edit_id)  # type: ignore[arg-type]
                        if edit.status == EditStatus.RUNNING:
                            edit.status, edit.started_at = EditStatus.QUEUED, None
            self._resync()
        for job_id in run:
            self._guarded(lambda: self.process_edits([job_id]), [job_id])

    def _guarded(self, fn: Callable[[], None], job_ids: list[int]) -> None:
        """Run ``fn`` on ``job_ids``. A failing job must not kill the worker: the jobs are marked
        failed with the error, and the model goes back to the committed state."""
        token = request_id_var.set(f"job-{job_ids[0]}")
        try:
            fn()
            self.last_error = None
        except FencedOff:
            self._resync()
            raise
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"
            if dependency_of(exc) == "database":
                raise  # an outage is not the job's fault: it must not end failed
            log.exception("job failed", extra={"jobs": job_ids})
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            with session_scope(self.sessions) as s:
                for job_id in job_ids:
                    self._mark_failed(s, job_id, error)
            self._resync()
        finally:
            request_id_var.reset(token)

    def _mark_failed(self, s: Session, job_id: int, error: str) -> None:
        job = repo.get_job(s, job_id)
        if job.status not in (JobStatus.PENDING, JobStatus.RUNNING):
            return
        job.status, job.finished_at, job.error = JobStatus.FAILED, utcnow(), error
        if job.kind == JobKind.EDIT and job.edit_id is not None:
            edit = repo.get_edit(s, job.edit_id)
            if edit.status in (EditStatus.QUEUED, EditStatus.RUNNING):
                edit.status, edit.error, edit.finished_at = EditStatus.FAILED, error, utcnow()
                self.metrics.edits.labels(EditStatus.FAILED).inc()
