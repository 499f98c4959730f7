"""One batch of edit jobs, from claiming their rows to the committed version(s).

The worker (:mod:`app.worker.loop`) hands every run of edit jobs here: claim the jobs' edits,
split off those that replace a live edit, compute and gate the rest as one batch (split in halves
when it fails a batch check), commit what passes (:mod:`app.worker.transactions`). The caller
holds the writer lock; everything here runs under the runtime's exclusive lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.budget import budget_is_spent
from app.db import session_scope
from app.metrics import Metrics
from app.runtime import Delta, EditRequest, ModelRuntime, make_request
from app.settings import Settings
from app.status import EditStatus, JobKind, JobStatus
from app.tables import utcnow
from app.worker.gate import Gate, GateRound, LiveEdit
from app.worker.replay import ActiveDeltas, DeltaCache, current_state
from app.worker.transactions import EditOutcome, Replacement, Transactions

log = logging.getLogger("app.worker")


class EditBatches:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], runtime: ModelRuntime, cache: DeltaCache,
        gate: Gate, transactions: Transactions, metrics: Metrics,
        enqueue: Callable[[list[int]], object] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.runtime = runtime
        self.cache = cache
        self.gate = gate
        self.transactions = transactions
        self.metrics = metrics
        self.enqueue = enqueue or (lambda job_ids: None)

    def process(self, job_ids: list[int]) -> None:
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
                live_prompts = {p.strip() for _, p, _, _ in repo.live_edit_facts(s, [i for i, _ in active])}
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

    def committed_state(self, with_live: bool | None = None) -> tuple[int, ActiveDeltas, list[LiveEdit]]:
        """The latest version, its active deltas, and its live edits (what the gate re-checks;
        by default read only when the gate is on)."""
        with_live = self.settings.gate_enabled if with_live is None else with_live
        with session_scope(self.sessions) as s:
            base_version, active = current_state(s, self.cache)
            facts = repo.live_edit_facts(s, [i for i, _ in active]) if with_live else []
            live = [LiveEdit(i, make_request(p, t, ps)) for i, p, t, ps in facts]
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
            base_version, active, live = self.committed_state()
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
            self._consolidate_if_spent(side_effects)

    def _supersede(
        self, eid: int, requests: dict[int, EditRequest], approved: set[int], wanted: int | None,
        todo: list[tuple[int, int]],
    ) -> None:
        """Gate ``eid`` on the committed state without the live edit it replaces, and commit both
        changes as one version: the old edit becomes ``superseded`` (linked both ways), its delta
        is dropped, and the other edits of that delta are recomputed into one delta that stays
        live. When nothing live is left to replace, ``eid`` is an ordinary edit."""
        base_version, active, live = self.committed_state()
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

    def _consolidate_if_spent(self, side_effects: dict | None) -> None:
        """With ``consolidate_when_spent``: the commit that spent the budget queues a consolidation
        (once per state: the database refuses a second one)."""
        if not self.settings.consolidate_when_spent:
            return
        if not budget_is_spent(side_effects, self.settings.side_effect_budget):
            return
        try:
            with session_scope(self.sessions) as s:
                latest = repo.latest_version(s)
                if latest is None or len(latest.active_deltas) < 2:
                    return
                job_id = repo.create_job(s, JobKind.CONSOLIDATE, "worker: side-effect budget spent",
                                         basis=latest.number).id
        except IntegrityError:
            return
        self.enqueue([job_id])
        log.info("side-effect budget spent: consolidation queued", extra={"job": job_id})

    def consolidate(self, job_id: int) -> None:
        """Re-solve every live edit together, from the base weights, into one delta. It is gated
        as a whole (each edit's own checks, the canaries, the budget) and committed as a version
        whose live edit set is unchanged; if any check fails nothing changes and the job fails
        with the verdict. One transaction: a crash leaves either the old state or the new one."""
        with self.runtime.exclusive():
            with session_scope(self.sessions) as s:
                job = repo.lock_job(s, job_id)
                if job.status != JobStatus.PENDING:
                    return
                job.status, job.started_at = JobStatus.RUNNING, utcnow()
                requested_by = job.requested_by
            base_version, active, live = self.committed_state(with_live=True)
            ids = [x.id for x in live]
            requests = {x.id: x.request for x in live}
            refusal = "fewer than two live deltas: nothing to consolidate" if len(active) < 2 else None
            delta, compute_s, measures, side_effects = None, 0.0, {}, None
            if refusal is None and self.settings.gate_enabled:
                r = self.gate.measure_group(ids, requests, set(), active, live, under=[], replaced=ids)
                if r.split or r.failures:  # the committed state is back (measure_group)
                    refusal = "the consolidated delta fails the gate: " + _verdict(r)
                else:
                    delta, compute_s, measures, side_effects = r.delta, r.compute_s, r.measures, r.side_effects
            elif refusal is None:
                self.runtime.set_state([], digest=False)
                delta, compute_s = self._compute(ids, requests)
            if refusal is not None or delta is None:
                self.runtime.set_state([d for _, d in active], digest=False)
                with session_scope(self.sessions) as s:
                    job = repo.lock_job(s, job_id)
                    job.status, job.finished_at, job.error = JobStatus.FAILED, utcnow(), f"not committed: {refusal}"
                return
            self.transactions.commit_consolidation(job_id, requested_by, base_version, active, ids, delta,
                                                   compute_s, measures, side_effects)
            if self.settings.gate_enabled:
                self.gate.advance()

    def record_side_effects(self, only_if_missing: bool = False) -> None:
        """Measure the committed state against the base model and store it on its version (what
        the API's budget check and /readyz read): after a revert or restore, and at take-over
        for a version nobody measured yet (the base model's, one made with the gate off)."""
        if not self.settings.gate_enabled or not self.gate.canaries:
            return
        with self.runtime.exclusive():
            number, active, live = self.committed_state()
            if only_if_missing:
                with session_scope(self.sessions) as s:
                    if repo.get_version(s, number).side_effects is not None:
                        return
            side_effects = self.gate.state_side_effects(tuple(i for i, _ in active), live)
            with session_scope(self.sessions) as s:
                repo.record_side_effects(s, number, side_effects)


def _verdict(r: GateRound) -> str:
    """A consolidation's gate failures in one line: how many edits fail, the first few with why."""
    if not r.failures:
        return "the batch checks (canaries, budget)"
    first = [f"edit {eid}: {'; '.join(fails)}" for eid, fails in sorted(r.failures.items())[:3]]
    return f"{len(r.failures)} of {len(r.measures)} live edits fail their checks ({' | '.join(first)})"
