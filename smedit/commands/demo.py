"""``smedit demo ...``: build the demo world, its base model and editors (cached)."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

demo_app = typer.Typer(
    help="The demo world: fictional product facts, a small LM trained to know them, and editors.",
    no_args_is_help=True,
)


@demo_app.callback()
def _group() -> None:
    """The demo world: fictional product facts, a small LM trained to know them, and editors."""
    # A callback keeps `demo` a command group even while `build` is its only command.


class DemoSizeName(str, Enum):
    tiny = "tiny"
    small = "small"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@demo_app.command("build")
def build(
    data_dir: Path = typer.Option(
        Path("data"), "--data-dir", envvar="SMEDIT_DATA_DIR",
        help="Data directory; the demo goes into DATA_DIR/demo/SIZE.",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a matching build exists."),
    size: DemoSizeName = typer.Option(DemoSizeName.small, "--size", help="tiny (tests) or small (default)."),
    seed: int = typer.Option(0, "--seed", help="World and training seed."),
    train_editor: bool = typer.Option(
        True, "--train-editor/--no-train-editor", help="Also meta-train the SMEdit and MALMEN editors.",
    ),
) -> None:
    """Generate the world, train the base model (and editors); reuse a matching earlier build."""
    from demo_world.build import build_demo, demo_paths  # imports torch: keep `smedit --help` fast

    console = Console()
    stamp_before = _read(demo_paths(data_dir, size.value).stamp_json)
    started = time.perf_counter()
    paths = build_demo(data_dir, size=size.value, seed=seed, force=force, progress=True,
                       train_editor=train_editor)
    seconds = time.perf_counter() - started

    table = Table(title=f"demo '{size.value}' (seed {seed}) in {paths.root}", show_header=False)
    table.add_row("world", str(paths.world_json))
    table.add_row("model", str(paths.model_dir))
    table.add_row("editor (SMEdit)", str(paths.editor_dir) if paths.editor_dir.is_dir() else "-")
    table.add_row("editor (MALMEN)", str(paths.malmen_dir) if paths.malmen_dir.is_dir() else "-")
    cached = stamp_before is not None and stamp_before == _read(paths.stamp_json)
    stats = _read(paths.stats_json) or {}
    pre = stats.get("pretrain", {})
    if pre:
        table.add_row("pretraining", f"{pre.get('steps')} steps, {pre.get('seconds')} s, "
                                     f"{pre.get('tokens_per_second')} tokens/s, stop: {pre.get('stopped')}")
    for name, value in stats.get("knowledge", {}).items():
        table.add_row(f"accuracy: {name}", f"{value:.1%}")
    table.add_row("this command", f"{seconds:.1f} s" + (" (cached build reused)" if cached else ""))
    console.print(table)


@demo_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="Directory for edits.jsonl and known.jsonl."),
    data_dir: Path = typer.Option(
        Path("data"), "--data-dir", envvar="SMEDIT_DATA_DIR", help="Data directory holding DATA_DIR/demo/SIZE.",
    ),
    size: DemoSizeName = typer.Option(DemoSizeName.small, "--size", help="The built demo to read."),
    seed: int = typer.Option(0, "--seed", help="The seed the demo was built with."),
) -> None:
    """Write a built demo's editor-training edits and the facts its model knows, as JSON Lines.

    ``edits.jsonl`` holds the train entities' edits the demo editors are meta-trained and validated
    on (never an eval or locality entity: test stays untouched); ``known.jsonl`` the facts the
    SMEdit editor protects (a seeded sample of the pretraining corpus). Together they are what
    ``smedit tune --data edits.jsonl --preserve known.jsonl`` needs to re-choose the demo editor.
    """
    from demo_world.build import demo_paths, editor_requests, preservation_requests, DEMO_SIZES
    from demo_world.world import World
    from editor_core.data import save_jsonl

    paths = demo_paths(data_dir, size.value)
    if not paths.world_json.is_file():
        Console(stderr=True).print(f"[red]error:[/red] no {size.value} demo in {paths.root}: "
                                   f"run smedit demo build --size {size.value} first")
        raise typer.Exit(2)
    world = World.load(paths.world_json)
    train, val = editor_requests(world, DEMO_SIZES[size.value], seed)
    known = preservation_requests(world, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_jsonl(train + val, out / "edits.jsonl")
    save_jsonl(known, out / "known.jsonl")
    Console().print(f"wrote {out / 'edits.jsonl'} ({len(train) + len(val)} edits of train entities) and "
                    f"{out / 'known.jsonl'} ({len(known)} known facts)")
