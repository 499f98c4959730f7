"""``smedit bench`` and ``python -m bench`` list every suite and hand arguments to the suite."""

from __future__ import annotations

SUITES = ["quality", "cost", "service", "lowdata", "sequential", "realdata"]


def test_smedit_bench_help_lists_suites():
    from typer.testing import CliRunner

    from smedit.cli import app

    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in SUITES:
        assert f" {name} " in result.output, name


def test_smedit_bench_suite_help_is_the_suites_own():
    from typer.testing import CliRunner

    from smedit.cli import app

    result = CliRunner().invoke(app, ["bench", "sequential", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "usage: smedit bench sequential" in result.output
    assert "--settings" in result.output and "--quick" in result.output


def test_python_m_bench_lists_suites(capsys):
    from bench.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUITES:
        assert f"  {name} " in out, name
    assert main(["no-such-suite"]) == 2


def test_every_suite_module_takes_argv_and_quick():
    """Each suite's main(argv) parses --quick (checked through --help, which runs nothing)."""
    import contextlib
    import io

    import pytest

    from bench.suites import SUITES as TABLE, run_suite

    assert set(SUITES) <= set(TABLE)
    for name in TABLE:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
            run_suite(name, ["--help"], prog=f"x {name}")
        assert exc.value.code == 0
        assert "--quick" in out.getvalue(), name


def test_smedit_protect_fits_the_preservation_set_and_sets_the_live_weight(tiny_setup, tmp_path):
    import json

    from typer.testing import CliRunner

    from editor_core.arch import last_layer_modules
    from editor_core.editor import EditorConfig, SMEditor
    from smedit.cli import app

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    SMEditor(model, tok, EditorConfig(n_steps=1, rank=4, modules=last_layer_modules(model, 1))).save(tmp_path / "ed")
    facts = tmp_path / "known.jsonl"
    facts.write_text("\n".join(json.dumps({"prompt": p, "target": a}) for p, a in world.pretraining_pairs()[:20]))
    result = CliRunner().invoke(app, ["protect", "--model", str(tmp_path / "model"), "--editor", str(tmp_path / "ed"),
                                      "--out", str(tmp_path / "out"), "--preserve", str(facts), "--live-weight", "2"])
    assert result.exit_code == 0, result.output
    from editor_core.models import load_model

    lm, tk = load_model(tmp_path / "model")
    protected = SMEditor.load(tmp_path / "out", lm, tk)
    assert protected.config.key_source == "corpus" and protected.config.live_weight == 2.0
    assert all(m.fitted == 1 and m.count > 0 for m in protected.key_moments)
    bad = CliRunner().invoke(app, ["protect", "--model", str(tmp_path / "model"), "--editor", str(tmp_path / "ed"),
                                   "--out", str(tmp_path / "o2"), "--preserve", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "missing.jsonl" in bad.output
