"""The ``smedit`` command line: library verbs, the demo world, the service and its client."""

from __future__ import annotations

import typer

from smedit.commands import client_cmds, cluster, core, tune
from smedit.commands.bench import bench_app
from smedit.commands.demo import demo_app
from smedit.commands.export import export_app
from smedit.commands.serve import serve, worker

app = typer.Typer(
    help="smedit: edit what a language model knows, keep a history, undo any change.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from smedit import __version__

        typer.echo(f"smedit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """smedit: edit what a language model knows, keep a history, undo any change."""

# The library.
app.command("train-editor")(core.train_editor)
app.command("protect")(core.protect)
app.command("eval")(core.evaluate)
app.command("tune")(tune.tune)
app.add_typer(demo_app, name="demo")
app.add_typer(export_app, name="export")
app.add_typer(bench_app, name="bench")

# The service and its client verbs.
app.command("serve")(serve)
app.command("worker")(worker)
app.add_typer(cluster.cluster_app, name="cluster")
for _name in ("edit", "bulk", "history", "revert", "restore", "consolidate", "approve", "reject", "generate", "probe"):
    app.command(_name)(getattr(client_cmds, _name))
app.add_typer(client_cmds.keys_app, name="keys")


if __name__ == "__main__":
    app()
