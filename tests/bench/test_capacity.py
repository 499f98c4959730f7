"""The capacity read-out of a lifelong curve: bars, the held count, and its ratios."""

from __future__ import annotations

import pytest

from bench.capacity import BARS, capacity, edited_size, known_facts, meets_bars

GOOD = {"es": 0.95, "gs_anchor": 0.92, "ls_other": 0.98, "ls_same": 0.96}


def entry(arm: str, live: int, **scores) -> dict:
    return {"arm": arm, "live_edits": live, "mean": {**GOOD, **scores}}


def test_every_bar_must_be_met_and_a_missing_score_is_not_met() -> None:
    assert meets_bars(GOOD)
    for metric in BARS:
        assert not meets_bars({**GOOD, metric: BARS[metric] - 1e-3})
        assert not meets_bars({k: v for k, v in GOOD.items() if k != metric})
        assert not meets_bars({**GOOD, metric: None})
    assert meets_bars({**GOOD, "es": BARS["es"]})  # the bar itself counts as met


def test_held_is_the_last_checkpoint_before_the_first_failure() -> None:
    summary = [entry("a", 100, ls_other=0.90), entry("a", 25), entry("a", 50),  # out of order
               entry("a", 200),  # met again after a failure: does not count
               entry("b", 25, es=0.5), entry("b", 50),
               entry("c", 25), entry("c", 50)]
    size = {"modules": 2, "edited_parameters": 2_000_000, "edited_inputs": 1024}
    rows = {r["arm"]: r for r in capacity(summary, {"a": size, "b": size, "c": size}, known_facts=500.0)}
    assert (rows["a"]["held"], rows["a"]["failed_at"]) == (50, 100)
    assert (rows["b"]["held"], rows["b"]["failed_at"]) == (0, 25)
    assert (rows["c"]["held"], rows["c"]["failed_at"]) == (50, None)  # never failed: a lower bound
    assert rows["a"]["held_per_million_parameters"] == pytest.approx(25.0)
    assert rows["a"]["held_per_thousand_inputs"] == pytest.approx(50 / 1.024)
    assert rows["a"]["held_share_of_known_facts"] == pytest.approx(0.1)


def test_edited_size_reads_inputs_from_either_weight_layout() -> None:
    import torch
    from transformers.pytorch_utils import Conv1D

    model = torch.nn.Module()
    model.gpt = Conv1D(nf=8, nx=32)  # GPT-2: weight (inputs 32, outputs 8)
    model.lin = torch.nn.Linear(16, 4)  # weight (outputs 4, inputs 16)
    assert edited_size(model, ["gpt", "lin"]) == {"modules": 2, "edited_parameters": 32 * 8 + 16 * 4,
                                                  "edited_inputs": 32 + 16}


def test_known_facts_are_the_facts_the_base_answers() -> None:
    assert known_facts({"world": {"facts": 2400}, "knowledge": {"seen": 0.999}}) == pytest.approx(2397.6)
