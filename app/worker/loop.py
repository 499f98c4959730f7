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
from app.db import session_scope
from app.logging import request_id_var
from app.metrics import Metrics
from app.queue import Queue, QueuedJob
from app.repository import FencedOff
from app.runtime import Delta, EditRequest, ModelRuntime, make_request
from app.settings import Settings
from app.status import EditStatus, JobKind, JobStatus
from app.tables import Job, utcnow
from app.worker.canaries import load_canaries
from app.worker.gate import Gate, GateRound, LiveEdit
from app.worker.leader import WriterLock
from app.worker.replay import ActiveDeltas, DeltaCache, current_state, resync
from app.worker.transactions import EditOutcome, Replacement, Transactions

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
        self.transactions = Transactions(settings, sessions, runtime, self.cache, metrics,
                                         announce or (lambda version: None))
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
            except Exception as exc:  # noqa: BLE001 - e.g. the DB is briefly unreachable: retry
                self.last_error = f"{type(exc).__name__}: {exc}"
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
            if kind in (JobKind.REVERT, JobKind.RESTORE):
                self._guarded(self.record_side_effects, [msg.job_id])
        if run:
            self._edit_run(run)
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
        except Exception:  # noqa: BLE001
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

    # ---- edits --------------------------------------------------------------------------------
    def process_edits(self, job_ids: list[int]) -> None:
        """Claim the jobs' edits, compute and gate them, commit what passes.

        An edit that replaces a live edit (an explicit ``supersedes``, the prompt of a live edit,
        or a prompt that came earlier in the same batch) is handled alone, after the others, so
        two targets for one prompt never stack (:meth:`_supersede`)."""
        with session_scope(self.sessions) as s:
            todo: list[tuple[int, int]] = []
            for job in [repo.lock_job(s, i) for i in job_ids]:
                edit = repo.lock_edit(s, job.edit_id) if job.edit_id is not None else None
                if job.status != JobStatus.PENDING or edit is None or edit.status != EditStatus.QUEUED:
                    if job.status == JobStatus.PENDING:  # edit already decided elsewhere: nothing to do
                        job.status, job.finished_at = JobStatus.DONE, utcnow()
                    continue
                job.status, job.started_at = JobStatus.RUNNING, utcnow()
                edit.status, edit.started_at = EditStatus.RUNNING, utcnow()
                todo.append((job.id, edit.id))
            edits = {e.id: e for e in repo.get_edits(s, [e for _, e in todo])}
            requests = {eid: make_request(e.prompt, e.target, e.paraphrases, e.locality) for eid, e in edits.items()}
            approved = {eid for eid, e in edits.items() if e.approved}
            wanted = {eid: e.supersedes for eid, e in edits.items()}
            live_prompts: set[str] = set()
            if todo:  # only this worker creates versions: the latest cannot move before the commit
                _, active = current_state(s, self.cache)
                live_prompts = {e.prompt.strip() for e in repo.live_edits(s, [i for i, _ in active])}
        if not todo:
            return
        for _ in todo:
            self.metrics.edits.labels(EditStatus.RUNNING).inc()
        plain: list[int] = []
        replacing: list[int] = []
        seen: set[str] = set()
        for _, eid in todo:
            prompt = requests[eid].prompt.strip()
            (replacing if wanted[eid] or prompt in live_prompts or prompt in seen else plain).append(eid)
            seen.add(prompt)
        with self.runtime.exclusive():
            if plain:
                self._gate_and_commit(plain, requests, approved, todo)
            for eid in replacing:
                self._supersede(eid, requests, approved, wanted[eid], todo)

    def _committed_state(self) -> tuple[int, ActiveDeltas, list[LiveEdit]]:
        """The latest version, its active deltas, and its live edits (what the gate re-checks)."""
        with session_scope(self.sessions) as s:
            base_version, active = current_state(s, self.cache)
            live = [LiveEdit(e.id, make_request(e.prompt, e.target, e.paraphrases))
                    for e in repo.live_edits(s, [i for i, _ in active])]
        return base_version, active, live

    def _compute(self, edit_ids: list[int], requests: dict[int, EditRequest]) -> tuple[Delta, float]:
        t0 = time.perf_counter()
        delta = self.runtime.compute([requests[e] for e in edit_ids])
        compute_s = time.perf_counter() - t0
        self.metrics.compute_latency.observe(compute_s)
        return delta, compute_s

    def _gate_and_commit(
        self, edit_ids: list[int], requests: dict[int, EditRequest], approved: set[int], todo: list[tuple[int, int]],
    ) -> None:
        """Without a gate: one delta for the batch, committed unmeasured. With it, a batch that
        fails a batch check (canaries, budget, a broken live edit) is split in halves, gated one
        after the other (each half on top of what the previous one committed), down to single
        edits: an edit is rejected for the batch checks only if it fails them alone, as it would
        have had it come in alone, whatever batch the queue happened to put it in."""
        groups = [list(edit_ids)]
        while groups:
            group = groups.pop(0)
            jobs = [(job_id, eid) for job_id, eid in todo if eid in group]
            base_version, active, live = self._committed_state()
            if not self.settings.gate_enabled:
                delta, compute_s = self._compute(group, requests)
                outcome = EditOutcome(delta, list(group), [], {}, {}, compute_s)
                self.transactions.commit_edits(base_version, active, outcome, jobs)
                continue
            r = self.gate.measure_group(group, requests, approved, active, live)
            if r.split:
                half = len(group) // 2
                groups[:0] = [group[:half], group[half:]]
                continue
            self._commit_round(r, group, requests, active, live, base_version, jobs)

    def _commit_round(
        self, r: GateRound, group: list[int], requests: dict[int, EditRequest], active: ActiveDeltas,
        live: list[LiveEdit], base_version: int, jobs: list[tuple[int, int]], replace: Replacement | None = None,
    ) -> None:
        delta, compute_s, measures, side_effects = r.delta, r.compute_s, r.measures, r.side_effects
        if r.failures and r.good:
            # Some edits failed: the delta must not carry them. Recompute from the good ones
            # and measure again; these are the numbers stored for the committed edits.
            again = self.gate.measure_group(r.good, requests, set(r.good), active, live)
            delta, compute_s, side_effects = again.delta, compute_s + again.compute_s, again.side_effects
            measures.update(again.measures)
        bad = [eid for eid in group if eid not in r.good]
        outcome = EditOutcome(delta if r.good else None, r.good, bad, measures, r.failures, compute_s, side_effects)
        self.transactions.commit_edits(base_version, active, outcome, jobs, replace)
        if r.good:  # the last gate round measured exactly the committed state
            self.gate.advance()

    def _supersede(
        self, eid: int, requests: dict[int, EditRequest], approved: set[int], wanted: int | None,
        todo: list[tuple[int, int]],
    ) -> None:
        """Gate ``eid`` on the committed state without the live edit it replaces, and commit both
        changes as one version: the old edit becomes ``superseded`` (linked both ways), its delta
        is dropped, and the other edits of that delta are recomputed into one delta that stays
        live. When nothing live is left to replace, ``eid`` is an ordinary edit."""
        base_version, active, live = self._committed_state()
        ids = [i for i, _ in active]
        with session_scope(self.sessions) as s:
            old = repo.get_edit(s, wanted) if wanted else None
            if old is None or old.status != EditStatus.APPLIED or old.delta_id not in ids:
                old = repo.live_edit_for_prompt(s, requests[eid].prompt, ids)
            if old is None:
                if wanted:
                    repo.lock_edit(s, eid).supersedes = None  # what it named is no longer live
            else:
                mates = [e for e in repo.live_edits(s, [old.delta_id]) if e.id != old.id]  # type: ignore[list-item]
                replace = Replacement(old.id, int(old.delta_id), [e.id for e in mates],  # type: ignore[arg-type]
                                      [make_request(e.prompt, e.target, e.paraphrases, e.locality) for e in mates])
        if old is None:
            self._gate_and_commit([eid], requests, approved, todo)
            return
        jobs = [(job_id, e) for job_id, e in todo if e == eid]
        replace.kept = [(i, d) for i, d in active if i != replace.dropped]
        under = [d for _, d in replace.kept]
        if replace.mate_requests:  # the dropped delta's other edits, recomputed without it
            self.runtime.set_state(under, digest=False)
            t0 = time.perf_counter()
            replace.recomputed = self.runtime.compute(replace.mate_requests)
            replace.recompute_s = time.perf_counter() - t0
            under.append(replace.recomputed)
        if not self.settings.gate_enabled:
            self.runtime.set_state(under, digest=False)
            delta, compute_s = self._compute([eid], requests)
            self.transactions.commit_edits(base_version, active, EditOutcome(delta, [eid], [], {}, {}, compute_s),
                                           jobs, replace)
            return
        r = self.gate.measure_group([eid], requests, approved, active, live, under=under, replaced=[replace.old_id])
        self._commit_round(r, [eid], requests, active, live, base_version, jobs, replace)

    def record_side_effects(self) -> None:
        """After a revert or restore: measure the new state against the base model and store it
        on its version (what the API's budget check and /readyz read)."""
        if not self.settings.gate_enabled or not self.gate.canaries:
            return
        with self.runtime.exclusive():
            number, active, live = self._committed_state()
            side_effects = self.gate.state_side_effects(tuple(i for i, _ in active), live)
            with session_scope(self.sessions) as s:
                repo.record_side_effects(s, number, side_effects)
