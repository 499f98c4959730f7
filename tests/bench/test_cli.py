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
