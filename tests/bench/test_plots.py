"""The PNG figures: each suite's payload gives real, non-empty PNG files; a plot failure keeps the JSON."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_pngs(paths, expected_names):
    assert sorted(p.name for p in paths) == sorted(expected_names)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000, p


def _means(es, gs, ls):
    return {"es": es, "gs_anchor": gs, "gs_unseen": gs / 2, "ls_other": ls, "ls_same": ls - 0.1}


def test_quality_bars_one_png_per_batch_size(tmp_path):
    from bench.plots import plot_quality

    results = [{"method": m, "batch": n, "mean": _means(0.2 + i / 10, 0.3, 0.9), "std": {"es": 0.05}}
               for i, m in enumerate(["no-edit", "MALMEN S=1 KL", "SMEdit S=2 L2"]) for n in (1, 16, 128)]
    paths = plot_quality({"size": "tiny", "results": results}, tmp_path / "quality_tiny")
    _assert_pngs(paths, ["quality_tiny_n1.png", "quality_tiny_n16.png", "quality_tiny_n128.png"])


def test_quality_bars_fall_back_to_plain_gs_ls(tmp_path):
    """Real-data results have gs / ls (no demo-world groups): still drawn."""
    from bench.plots import plot_quality

    results = [{"method": "SMEdit S=2 L2", "batch": 16, "mean": {"es": 0.9, "gs": 0.4, "ls": 0.8}}]
    _assert_pngs(plot_quality({"dataset": "CounterFact", "results": results}, tmp_path / "realdata_x"),
                 ["realdata_x_n16.png"])


def test_cost_time_and_memory_vs_batch_and_steps(tmp_path):
    from bench.plots import plot_cost

    payload = {
        "edit_vs_floor": [{"n_steps": s, "batch": 16, "edit_s": 0.01 * s, "floor_s": 0.008 * s, "ratio": 1.2,
                           "peak_delta_mb": 3.0 * s} for s in (1, 2, 3)],
        "batch_sizes": [{"batch": n, "edit_s": 0.001 * n, "facts_per_s": 1000.0, "peak_mb": 500.0,
                         "peak_delta_mb": 0.5 * n} for n in (1, 4, 16, 64)],
    }
    _assert_pngs(plot_cost(payload, tmp_path / "cost_tiny"), ["cost_tiny_batch.png", "cost_tiny_steps.png"])


def test_lowdata_and_sequential_curves(tmp_path):
    from bench.plots import plot_lowdata, plot_sequential

    low = {"results": [{"method": m, "fraction": f, "mean": _means(f, f / 2, 0.9)}
                       for m in ("SMEdit S=2 L2", "MALMEN S=1 KL") for f in (0.05, 0.25, 1.0)]}
    _assert_pngs(plot_lowdata(low, tmp_path / "lowdata_tiny"), ["lowdata_tiny_curve.png"])
    seq = {"results": [{"method": "SMEdit S=2 L2", "T": t, "n": 10, "mean": _means(1 - t / 40, 0.5, 0.9)}
                       for t in (1, 5, 20)]}
    _assert_pngs(plot_sequential(seq, tmp_path / "sequential_tiny"), ["sequential_tiny_curve.png"])


def test_empty_results_raise_instead_of_writing_a_blank_figure(tmp_path):
    from bench.plots import plot_quality, plot_sequential

    with pytest.raises(ValueError):
        plot_sequential({"results": []}, tmp_path / "s")
    assert plot_quality({"results": []}, tmp_path / "q") == []
    assert not list(tmp_path.iterdir())


def test_plot_failure_keeps_the_json(results, capsys):
    from bench.common import write_with_plots

    def broken(payload, prefix):
        raise RuntimeError("no display")

    path, pngs = write_with_plots("broken", {"results": [1, 2]}, broken)
    assert pngs == []
    assert path == results / "broken.json"
    assert json.loads(path.read_text())["results"] == [1, 2]
    assert "plots for broken not written" in capsys.readouterr().out
