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


def test_held_is_the_last_checkpoint_that_met_every_bar() -> None:
    summary = [entry("a", 100, ls_other=0.90), entry("a", 25), entry("a", 50),  # out of order
               entry("a", 10, gs_anchor=0.75),  # a noisy first checkpoint: listed, not the end
               entry("a", 200, ls_same=0.5),
               entry("b", 25, es=0.5), entry("b", 50, es=0.5),
               entry("c", 25), entry("c", 50)]
    size = {"modules": 2, "edited_parameters": 2_000_000, "edited_inputs": 1024}
    rows = {r["arm"]: r for r in capacity(summary, {"a": size, "b": size, "c": size}, known_facts=500.0)}
    assert (rows["a"]["held"], rows["a"]["failed_at"], rows["a"]["missed_before"]) == (50, 100, [10])
    assert (rows["b"]["held"], rows["b"]["failed_at"], rows["b"]["missed_before"]) == (0, 25, [])
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


def _payload(seed: int, ls_other: float, **overrides) -> dict:
    """A bench.lifelong result file of one seed, one arm, two checkpoints."""
    size = {"modules": 2, "edited_parameters": 1000, "edited_inputs": 64}
    rows = [{"arm": "demo", "seed": seed, "submitted": n, "live_edits": n, "es": 0.95, "gs_anchor": 0.95,
             "gs_unseen": 0.3, "ls_other": ls_other if n == 20 else 0.99, "ls_same": 0.99, "spec_other": 0.99,
             "spec_same": 0.99, "latency_p50_s": 0.1, "latency_p99_s": 0.2} for n in (10, 20)]
    return {"size": "tiny", "split": "test", "edits": 20, "checkpoints": [10, 20], "burst": 1, "gate": False,
            "production": False, "seeds": [seed], "sizes": {"demo": size}, "known_facts": 300.0, "rows": rows,
            "max_steps": None, "demo": {"size": "tiny", "seed": 0},
            **overrides}


def test_lifelong_merge_pools_seeds_and_refuses_what_cannot_pool(tmp_path, monkeypatch, capsys) -> None:
    import json

    import bench.common
    import bench.lifelong

    monkeypatch.setattr(bench.common, "results_dir", lambda: tmp_path)
    files = []
    for seed, ls in ((0, 0.99), (1, 0.93)):  # seed 1 misses the LS bar at 20: so does the mean
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps(_payload(seed, ls)))
    bench.lifelong.main(["--merge", *map(str, files)])
    merged = json.loads((tmp_path / "lifelong_tiny_test_merged.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["merged_from"] == 2 and len(merged["rows"]) == 4
    at20 = next(e for e in merged["summary"] if e["live_edits"] == 20)
    assert at20["n_seeds"] == 2 and at20["mean"]["ls_other"] == pytest.approx(0.96)
    [held] = merged["capacity"]
    assert (held["held"], held["failed_at"], held["edited_parameters"]) == (10, 20, 1000)
    old = _payload(2, 0.99)  # a file from before "sizes": the same numbers come from its capacity
    old["capacity"] = [{"arm": "demo", **old.pop("sizes")["demo"], "known_facts": old.pop("known_facts")}]
    (tmp_path / "old.json").write_text(json.dumps(old))
    bench.lifelong.main(["--merge", str(files[0]), str(tmp_path / "old.json")])
    assert json.loads((tmp_path / "lifelong_tiny_test_merged.json").read_text())["seeds"] == [0, 2]
    other_modules = _payload(2, 0.99)
    other_modules["sizes"]["demo"] = {**other_modules["sizes"]["demo"], "edited_parameters": 5}
    cases = [(_payload(0, 0.99), "seed"), (_payload(2, 0.99, checkpoints=[5, 20]), "checkpoints differs"),
             (_payload(2, 0.99, known_facts=1.0), "other facts"), (_payload(2, 0.99, max_steps=3), "max_steps differs"),
             (other_modules, "other modules"), (_payload(2, 0.99)["rows"], "not a bench.lifelong result file")]
    for bad, reason in cases:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit):
            bench.lifelong.main(["--merge", str(files[0]), str(tmp_path / "bad.json")])
        assert reason in capsys.readouterr().err


def test_lifelong_arm_names_the_l2_metric_of_a_trained_arm_only() -> None:
    from bench.lifelong import parse_arm

    assert parse_arm("trained corpus live=1 l2=key")["l2"] == "key"
    assert parse_arm("trained corpus live=1")["l2"] is None  # the demo spec's metric
    with pytest.raises(ValueError, match="only apply to a trained arm"):
        parse_arm("corpus l2=key")
    with pytest.raises(ValueError, match="unknown option 'l2=cosine'"):
        parse_arm("trained l2=cosine")
