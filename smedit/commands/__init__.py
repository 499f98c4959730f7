"""CLI command groups; each module exposes Typer commands registered in ``smedit.cli``."""
