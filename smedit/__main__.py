"""``python -m smedit ...``: the same Typer app as the ``smedit`` console script."""

from smedit.cli import app

if __name__ == "__main__":
    app(prog_name="smedit")
