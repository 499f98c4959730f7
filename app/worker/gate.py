"""The quality gate: measure a candidate delta, decide which edits may be committed.

An edit passes when its edit success (and generalisation, when it has paraphrases) reach the
configured bars; a batch passes the canary check when at most ``gate_max_canary_change`` of the
canaries change their greedy answer. The canaries' reference answers are cached per committed
state and advanced from the gate's own measurement, so a gated edit costs one measuring pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.metrics import Metrics
from app.runtime import Delta, EditMeasure, EditRequest, ModelRuntime
from app.settings import Settings
from app.worker.replay import ActiveDeltas


@dataclass
class GateRound:
    """One delta computed for a group of edits and measured on top of the committed state.

    ``split``: the group failed the canary bar as a whole and more than one edit could be at
    fault; nothing may be committed, the caller gates its halves instead (the committed state has
    been put back). Otherwise the candidate state stays in place when every edit passed, so it
    can be committed as measured; when some failed, the committed state is back."""

    delta: Delta
    compute_s: float
    good: list[int]
    measures: dict[int, EditMeasure]
    failures: dict[int, list[str]] = field(default_factory=dict)
    split: bool = False


class Gate:
    def __init__(self, settings: Settings, runtime: ModelRuntime, metrics: Metrics, canaries: Sequence[str]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.canaries = list(canaries)
        # canaries' reference answers: (active delta ids they hold for, answers, stale indices)
        self.cached: tuple[tuple[int, ...], list[list[int]], list[int]] | None = None
        self._last_kept: list[bool] = []  # per canary, of the state the last round measured

    def measure_group(
        self, candidates: list[int], requests: dict[int, EditRequest], approved: set[int], active: list[Delta],
        reference: list[list[int]],
    ) -> GateRound:
        """Compute one delta for ``candidates``, measure each edit, split into passing/failing.

        Edits a reviewer approved are never failed for their own numbers or the canaries."""
        t0 = time.perf_counter()
        reqs = [requests[e] for e in candidates]
        delta = self.runtime.compute(reqs)
        compute_s = time.perf_counter() - t0
        self.metrics.compute_latency.observe(compute_s)
        measurement = self.runtime.measure(reqs, active + [delta], None, self.canaries, reference)
        self._last_kept = measurement.canary_kept
        measures = dict(zip(candidates, measurement.edits))
        failures: dict[int, list[str]] = {}
        for eid, m in measures.items():
            fails = self.edit_failures(m)
            if fails and eid not in approved:
                failures[eid] = fails
        batch_canary = self.canary_failures(measurement.edits[0]) if measurement.edits else []
        if batch_canary:
            suspects = [e for e in candidates if e not in failures and e not in approved]
            if len(candidates) > 1 and suspects:
                self.runtime.set_state(active, digest=False)  # not committed: back to the committed state
                return GateRound(delta, compute_s, [], measures, failures, split=True)
            for eid in suspects:
                failures.setdefault(eid, []).extend(batch_canary)
        good = [e for e in candidates if e not in failures]
        if failures:
            self.runtime.set_state(active, digest=False)  # the delta is not committed as measured
        return GateRound(delta, compute_s, good, measures, failures)

    def edit_failures(self, m: EditMeasure) -> list[str]:
        """The edit's own checks that failed, as ``"<check>: <value> < <bar>"``."""
        st = self.settings
        fails = []
        if m.es < st.gate_min_es:
            fails.append(f"es: {m.es:.3f} < {st.gate_min_es}")
        if m.gs is not None and m.gs < st.gate_min_gs:
            fails.append(f"gs: {m.gs:.3f} < {st.gate_min_gs}")
        return fails

    def canary_failures(self, m: EditMeasure) -> list[str]:
        """The batch's canary check (the same value on every edit of the batch)."""
        bar = self.settings.gate_max_canary_change
        if m.canary_changed is not None and m.canary_changed > bar:
            return [f"canary: {m.canary_changed:.3f} of canaries changed > {bar}"]
        return []

    # ---- canary references ------------------------------------------------------------------
    def reference(self, active: ActiveDeltas) -> list[list[int]]:
        """The canaries' answers on the current state, cached per active delta list (the state
        they depend on). When the state moved on, one teacher-forced pass finds the canaries
        whose answer it kept; only the others are decoded again. After a gated commit the gate's
        own pass already told which canaries changed (:meth:`advance`), so the next edit skips
        that pass."""
        key = tuple(i for i, _ in active)
        tokens = self.settings.canary_tokens
        if self.cached is None:
            self.cached = (key, self.runtime.canary_answers(self.canaries, tokens), [])
        elif self.cached[0] != key:
            reference = self.cached[1]
            kept = self.runtime.canaries_kept(self.canaries, reference)
            self.cached = (key, reference, [i for i, k in enumerate(kept) if not k])
        key, reference, stale = self.cached
        if stale:
            reference = list(reference)
            fresh = self.runtime.canary_answers([self.canaries[i] for i in stale], tokens)
            for i, ids in zip(stale, fresh):
                reference[i] = ids
            self.cached = (key, reference, [])
        return list(reference)

    def advance(self, kept: list[bool] | None = None) -> None:
        """The state just committed is the one the last round measured (``kept`` by default):
        the canaries it reported kept still answer as in the reference; the others are marked
        for decoding."""
        kept = self._last_kept if kept is None else kept
        if self.cached is None or len(kept) != len(self.canaries):
            return
        stale = sorted(set(self.cached[2]) | {i for i, k in enumerate(kept) if not k})
        self.cached = (tuple(self.runtime.active_ids), self.cached[1], stale)
