"""The quality gate: measure a candidate delta, decide which edits may be committed.

The gate judges what a user would get, and against the model the deployment started from:
- an edit passes when greedy decoding of its prompt gives its target (``gate_match``: the whole
  target, or its first token) and enough of its paraphrases do (``gate_min_gs``);
- a canary's reference is the base model's greedy answer (for a canary that is the prompt of a
  live edit: that edit's target), never the previous version's, so drift cannot accumulate
  unseen. A batch may change at most ``gate_max_canary_change`` of the canaries the committed
  state kept, and the state it leads to may differ from the base on at most
  ``side_effect_budget`` of them (reason ``capacity`` beyond);
- it re-checks a sample of live edits (their prompts and paraphrases) and fails a batch that
  breaks one, naming it.
All of it is scored in one teacher-forced forward pass over the batch's rows, the sampled live
edits' rows and the canaries; a second, small pass runs only to confirm a suspected break.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.metrics import Metrics
from app.runtime import Delta, EditMeasure, EditRequest, ModelRuntime
from app.settings import Settings
from app.worker.replay import ActiveDeltas


@dataclass(frozen=True)
class LiveEdit:
    """An applied edit whose delta is live: what the gate re-checks and keeps canaries to."""

    id: int
    request: EditRequest


@dataclass
class GateRound:
    """One delta computed for a group of edits and measured on top of the committed state.

    ``split``: the group failed a batch check (canaries, budget, a broken live edit) and more
    than one edit could be at fault; nothing may be committed, the caller gates its halves instead
    (the committed state has been put back). Otherwise the candidate state stays in place when
    every edit passed, so it can be committed as measured; when some failed, the committed state
    is back. ``side_effects``: the candidate state against the base model (stored on its version)."""

    delta: Delta
    compute_s: float
    good: list[int]
    measures: dict[int, EditMeasure]
    failures: dict[int, list[str]] = field(default_factory=dict)
    split: bool = False
    side_effects: dict[str, Any] | None = None


@dataclass
class _Candidate:
    """What the last measured candidate state looked like, for :meth:`Gate.advance`."""

    changed: frozenset[int]
    rows: dict[int, list[bool]]
    side_effects: dict[str, Any]


class Gate:
    def __init__(self, settings: Settings, runtime: ModelRuntime, metrics: Metrics, canaries: Sequence[str]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.canaries = list(canaries)
        self._base: list[list[int]] | None = None  # the canaries' greedy answers on the base model
        # per committed state (its active delta ids): canaries that differ from their reference,
        # and the rows of live edits known to give their target there
        self._committed: tuple[tuple[int, ...], frozenset[int]] | None = None
        self._rows: tuple[tuple[int, ...], dict[int, list[bool]]] = ((), {})
        self._last: _Candidate | None = None
        self._commits = 0  # commits this process made: moves the re-check window over the older edits
        self._window_start = random.Random("recheck").randrange(1 << 30)

    # ---- one round --------------------------------------------------------------------------
    def measure_group(
        self, candidates: list[int], requests: dict[int, EditRequest], approved: set[int], active: ActiveDeltas,
        live: Sequence[LiveEdit], under: Sequence[Delta] | None = None, replaced: Sequence[int] = (),
    ) -> GateRound:
        """Compute one delta for ``candidates`` on ``under`` (default: the committed ``active``
        state), measure it, and split the edits into passing and failing.

        ``replaced``: live edits the candidates supersede (``under`` already lacks them): they are
        neither re-checked nor kept as canary references. Edits a reviewer approved are never
        failed, for their own numbers or the batch's."""
        key = tuple(i for i, _ in active)
        committed = [d for _, d in active]
        gone = set(replaced)
        live = [x for x in live if x.id not in gone]
        before = self.committed_changed(key, live)
        reqs = [requests[e] for e in candidates]
        base = list(under) if under is not None else committed
        if under is not None:
            self.runtime.set_state(base, digest=False)
        t0 = time.perf_counter()
        delta = self.runtime.compute(reqs)
        compute_s = time.perf_counter() - t0
        self.metrics.compute_latency.observe(compute_s)

        sample = self.recheck_sample(live, key)
        reference = self.reference([x.request for x in live] + reqs)
        candidate = base + [delta]
        m = self.runtime.measure(reqs, candidate, None, self.canaries, reference,
                                 recheck=[x.request for x in sample])
        changed = frozenset(i for i, k in enumerate(m.canary_kept) if not k)
        new = changed - before
        broken = self._broken(sample, m.recheck, key, committed, candidate)
        rows = {x.id: self._rows_of(r) for x, r in zip(sample, m.recheck)}
        rows.update({e: self._rows_of(r) for e, r in zip(candidates, m.edits)})
        side_effects = self._side_effects(changed, new)
        self._last = _Candidate(changed, rows, side_effects)

        measures = dict(zip(candidates, m.edits))
        for measure in measures.values():
            measure.canary_new = len(new) / len(self.canaries) if self.canaries else None
            measure.broken_edits = sorted(broken)
        failures: dict[int, list[str]] = {}
        for eid, measure in measures.items():
            fails = self.edit_failures(measure)
            if fails and eid not in approved:
                failures[eid] = fails
        batch = self.batch_failures(changed, new, broken)
        if batch:
            suspects = [e for e in candidates if e not in failures and e not in approved]
            if len(candidates) > 1 and suspects:
                self.runtime.set_state(committed, digest=False)  # not committed: back to the committed state
                return GateRound(delta, compute_s, [], measures, failures, split=True)
            for eid in suspects:
                failures.setdefault(eid, []).extend(batch)
        good = [e for e in candidates if e not in failures]
        if failures:
            self.runtime.set_state(committed, digest=False)  # the delta is not committed as measured
        return GateRound(delta, compute_s, good, measures, failures, side_effects=side_effects)

    def edit_failures(self, m: EditMeasure) -> list[str]:
        """The edit's own checks that failed, as ``"<check>: <value> < <bar>"``: does greedy
        decoding of its prompt (ES) and of its paraphrases (GS, the share that do) give the
        target, under ``gate_match``."""
        st = self.settings
        first = st.gate_match == "first_token"
        es = m.es_first if first else m.es_exact
        gs = m.gs_first if first else m.gs_exact
        fails = []
        if es < st.gate_min_es:
            fails.append(f"es: {es:.3f} < {st.gate_min_es} (greedy answer is not the target, {st.gate_match})")
        if gs is not None and gs < st.gate_min_gs:
            fails.append(f"gs: {gs:.3f} < {st.gate_min_gs} (share of paraphrases giving the target, {st.gate_match})")
        return fails

    def batch_failures(self, changed: frozenset[int], new: frozenset[int], broken: dict[int, str]) -> list[str]:
        """The checks of the state the batch leads to: canaries it changed, the side-effect
        budget, live edits it broke (the same verdict for every edit of the batch)."""
        n = len(self.canaries)
        st = self.settings
        fails = []
        if n and len(new) / n > st.gate_max_canary_change:
            fails.append(f"canary: {len(new) / n:.3f} of canaries changed by this edit > {st.gate_max_canary_change}")
        if n and len(changed) > st.side_effect_budget * n:
            fails.append(f"capacity: {len(changed)} of {n} canaries would differ from the base model, over the "
                         f"side-effect budget {st.side_effect_budget} ({st.side_effect_budget * n:.1f})")
        for eid, what in sorted(broken.items()):
            fails.append(f"breaks: edit {eid}: {what}")
        return fails

    def advance(self) -> None:
        """The state just committed is the one the last round measured: its canary and row
        results become the committed state's."""
        if self._last is None:
            return
        key = tuple(self.runtime.active_ids)
        self._commits += 1
        self._committed = (key, self._last.changed)
        self._rows = (key, dict(self._last.rows))
        self.metrics.side_effects.set(self._last.side_effects["share"])

    @property
    def last_side_effects(self) -> dict[str, Any] | None:
        return self._last.side_effects if self._last is not None else None

    # ---- canaries ---------------------------------------------------------------------------
    def base_reference(self) -> list[list[int]]:
        """The canaries' greedy answers on the base model, decoded once per process."""
        if self._base is None:
            self._base = self.runtime.base_answers(self.canaries, self.settings.canary_tokens)
        return self._base

    def reference(self, live: Sequence[EditRequest]) -> list[list[int]]:
        """Each canary's expected answer: the base model's, or, for a canary that is the prompt
        of one of ``live`` (later ones win), that edit's target."""
        targets = {r.prompt.strip(): r for r in live}
        reference = list(self.base_reference())
        for i, prompt in enumerate(self.canaries):
            r = targets.get(prompt.strip())
            if r is not None:
                reference[i] = self.runtime.target_ids(r.prompt, r.target)
        return reference

    def committed_changed(self, key: tuple[int, ...], live: Sequence[LiveEdit]) -> frozenset[int]:
        """Canaries that differ from their reference on the committed state (the runtime's
        current one), cached per state; measured with one teacher-forced pass when not known."""
        if self._committed is not None and self._committed[0] == key:
            return self._committed[1]
        kept = self.runtime.canaries_kept(self.canaries, self.reference([x.request for x in live]))
        changed = frozenset(i for i, k in enumerate(kept) if not k)
        self._committed = (key, changed)
        self.metrics.side_effects.set(len(changed) / len(self.canaries) if self.canaries else 0.0)
        return changed

    def state_side_effects(self, key: tuple[int, ...], live: Sequence[LiveEdit]) -> dict[str, Any]:
        """The committed state against the base model (a revert or restore records it)."""
        changed = self.committed_changed(key, live)
        return self._side_effects(changed, frozenset())

    def _side_effects(self, changed: frozenset[int], new: frozenset[int]) -> dict[str, Any]:
        n = len(self.canaries)
        return {
            "changed": len(changed), "total": n, "share": len(changed) / n if n else 0.0, "new": len(new),
            "budget": self.settings.side_effect_budget,
            "changed_canaries": [self.canaries[i] for i in sorted(changed)][:20],
        }

    # ---- live edits -------------------------------------------------------------------------
    def recheck_sample(self, live: Sequence[LiveEdit], key: tuple[int, ...]) -> list[LiveEdit]:
        """Up to ``gate_recheck_edits`` live edits: the latest half, and a window over the older
        ones that moves on by a few edits per commit (from a random start), so every old edit
        comes round. Both were measured by the pass that committed the current state, except
        the few the window just reached: only a failure of one of those needs the confirmation
        pass on the committed model (:meth:`_broken`)."""
        k = self.settings.gate_recheck_edits
        if len(live) <= k:
            return list(live)
        recent = list(live[len(live) - (k - k // 2):])
        older = list(live[: len(live) - len(recent)])
        size = min(k // 2, len(older))
        start = self._window_start + self._commits * max(1, k // 16)
        return [older[(start + i) % len(older)] for i in range(size)] + recent

    def _rows_of(self, m: EditMeasure) -> list[bool]:
        return list(m.rows_first if self.settings.gate_match == "first_token" else m.rows_exact)

    def _holds(self, rows: Sequence[bool]) -> list[str]:
        """Which of the gate's own checks a live edit fails with these rows (prompt first, then
        paraphrases): the bars it passed when it was committed."""
        st = self.settings
        fails = []
        if rows and float(rows[0]) < st.gate_min_es:
            fails.append("its prompt no longer gives its target")
        if len(rows) > 1:
            share = sum(rows[1:]) / (len(rows) - 1)
            if share < st.gate_min_gs:
                fails.append(f"only {sum(rows[1:])} of its {len(rows) - 1} paraphrases give its target")
        return fails

    def _broken(
        self, sample: Sequence[LiveEdit], measured: Sequence[EditMeasure], key: tuple[int, ...],
        committed: list[Delta], candidate: list[Delta],
    ) -> dict[int, str]:
        """Live edits that pass the gate's own checks (ES, GS) on the committed state and not on
        the candidate. The committed result of an edit the candidate fails is measured there
        first when it is not known (the candidate state is back afterwards)."""
        known = self._rows[1] if self._rows[0] == key else {}
        suspects: list[tuple[LiveEdit, list[str]]] = []
        for x, m in zip(sample, measured):
            fails = self._holds(self._rows_of(m))
            if fails:
                suspects.append((x, fails))
        unknown = [x for x, _ in suspects if x.id not in known]
        if unknown:
            then = self.runtime.measure([x.request for x in unknown], committed, candidate).edits
            known = {**known, **{x.id: self._rows_of(m) for x, m in zip(unknown, then)}}
            self._rows = (key, known)
        broken: dict[int, str] = {}
        for x, fails in suspects:
            if not self._holds(known.get(x.id, [])):
                broken[x.id] = f"{x.request.prompt!r} -> {x.request.target!r}: {', '.join(fails)}"
        return broken
