"""The ``smedit`` command line: library verbs, the demo world, the service and its client."""

from __future__ import annotations

import typer

from smedit.commands import core
from smedit.commands.demo import demo_app

app = typer.Typer(
    help="smedit: edit what a language model knows, keep a history, undo any change.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

app.command("train-editor")(core.train_editor)
app.command("eval")(core.evaluate)
app.add_typer(demo_app, name="demo")

try:  # the service commands land with app/; the library verbs work without them
    from smedit.commands.serve import serve

    app.command("serve")(serve)
except ImportError:  # pragma: no cover
    pass

try:
    from smedit.commands import client_cmds

    for _name in ("edit", "history", "revert", "restore", "generate"):
        if hasattr(client_cmds, _name):
            app.command(_name)(getattr(client_cmds, _name))
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    app()
