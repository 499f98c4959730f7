"""``smedit bench SUITE [--quick] [options]``: the benchmark suites of ``bench/`` by name.

Each command hands its arguments unchanged to the suite's own parser, so ``smedit bench quality
--help`` shows the suite's options and ``python -m bench.quality ...`` stays equivalent. The
``bench`` package lives in the source tree, not in the installed package: it is found next to
``smedit/`` (editable installs) or in the current directory (run from the repository root).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _load_suites():
    """``bench.suites``, looked for in the source tree and then the working directory; None if absent."""
    try:
        return importlib.import_module("bench.suites")
    except ImportError:
        pass
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "bench" / "suites.py").is_file():
            if str(root) not in sys.path:
                sys.path.append(str(root))  # appended: never shadows an installed module
            try:
                return importlib.import_module("bench.suites")
            except ImportError:
                continue
    return None


_suites = _load_suites()

if _suites is None:
    bench_app = typer.Typer(help="Benchmark suites (not found: run from the smedit repository root).")

    @bench_app.callback(invoke_without_command=True)
    def _missing() -> None:
        """Benchmark suites: not found here."""
        typer.echo("error: the bench/ suites live in the smedit source tree; run this from the repository root",
                   err=True)
        raise typer.Exit(2)
else:
    bench_app = typer.Typer(
        help="Benchmark suites: each takes --quick (under 10 minutes on 2 CPU cores) and writes JSON and PNG "
             "plots into bench/results/ (or $SMEDIT_BENCH_RESULTS). Same as python -m bench.SUITE.",
        no_args_is_help=True)

    def _command(name: str):
        def command(ctx: typer.Context) -> None:
            _suites.run_suite(name, list(ctx.args), prog=f"smedit bench {name}")

        command.__name__ = f"bench_{name}"
        return command

    for _name, (_module, _what) in _suites.SUITES.items():
        bench_app.command(_name, context_settings=_PASS_THROUGH, add_help_option=False,
                          help=f"{_what} (--quick; --help lists the suite's options)")(_command(_name))
