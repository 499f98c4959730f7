"""How many edits a model holds: the capacity curve read against the issue's bars.

A lifelong run (``bench.lifelong``) gives, per arm, the scores at each checkpoint of live edits.
This module turns them into one number per arm that travels to other models: the most live edits
at which the arm still met every bar (``held``), and the next checkpoint, where it did not
(``failed_at``; the true capacity lies between the two), divided by what the editor may change
(edited parameters, and the inputs its keys live in) and by what the model knows (its known facts).
An earlier checkpoint that missed a bar (the noise of a few edits) is listed, not taken as the end.
A real LM's edited layers read 11,008-16,384 inputs each, over many layers, so the per-input and
per-fact ratios are what say something about it; the raw counts only describe this base.
"""

from __future__ import annotations

# The capacity issue's bars, on all live edits (ES, GS anchor) and on untouched facts (LS).
BARS: dict[str, float] = {"es": 0.93, "gs_anchor": 0.90, "ls_other": 0.97, "ls_same": 0.95}


def meets_bars(scores: dict, bars: dict[str, float] = BARS) -> bool:
    """Every bar met (a missing score counts as not met: nothing was measured)."""
    return all(scores.get(metric) is not None and scores[metric] >= bar for metric, bar in bars.items())


def edited_size(model, module_names: list[str]) -> dict:
    """What the editor may change: the edited weights' parameters and their inputs (key width)."""
    from editor_core.arch import weight_shape

    params = inputs = 0
    for name in module_names:
        d_in, d_out = weight_shape(model.get_submodule(name))
        params += d_in * d_out
        inputs += d_in
    return {"modules": len(module_names), "edited_parameters": params, "edited_inputs": inputs}


def capacity(summary: list[dict], sizes: dict[str, dict], known_facts: float,
             bars: dict[str, float] = BARS) -> list[dict]:
    """Per arm: the most live edits held at the bars (mean over seeds), the next checkpoint (where
    it failed), and those counts per edited parameter, input and known fact.

    Side effects only grow with live edits, so an earlier checkpoint below a bar is the noise of
    few edits (GS anchor over the anchor paraphrases of 10 edits); such checkpoints are listed in
    ``missed_before``, not taken as the capacity.

    ``summary`` is bench.lifelong's (``arm``, ``live_edits``, ``mean``) entries; ``sizes`` maps
    each arm to :func:`edited_size`'s dict; ``known_facts`` the facts the base model answers.
    """
    by_arm: dict[str, list[dict]] = {}
    for entry in summary:
        by_arm.setdefault(entry["arm"], []).append(entry)
    out = []
    for arm, entries in by_arm.items():
        size = sizes[arm]
        entries = sorted(entries, key=lambda e: e["live_edits"])
        met = [meets_bars(e["mean"], bars) for e in entries]
        last = max((i for i, ok in enumerate(met) if ok), default=None)
        held = entries[last]["live_edits"] if last is not None else 0.0
        failed_at = entries[last + 1]["live_edits"] if last is not None and last + 1 < len(entries) else \
            (entries[0]["live_edits"] if last is None and entries else None)
        missed = [e["live_edits"] for e, ok in zip(entries[: last or 0], met) if not ok]
        out.append({
            "arm": arm, "held": held, "failed_at": failed_at, "missed_before": missed, **size,
            "known_facts": known_facts,
            "held_per_million_parameters": held / size["edited_parameters"] * 1e6 if size["edited_parameters"] else None,
            "held_per_thousand_inputs": held / size["edited_inputs"] * 1e3 if size["edited_inputs"] else None,
            "held_share_of_known_facts": held / known_facts if known_facts else None,
        })
    return out


def known_facts(stats: dict) -> float:
    """Facts the demo's base model answers: the world's facts times its accuracy on them."""
    return round(stats["world"]["facts"] * stats["knowledge"]["seen"], 1)
