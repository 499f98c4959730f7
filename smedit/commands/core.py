"""``smedit train-editor`` and ``smedit eval``: the editing library from the command line."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


class Reg(str, Enum):
    l2 = "l2"
    kl = "kl"


class L2Metric(str, Enum):
    frobenius = "frobenius"
    key = "key"
    locality = "locality"


class Method(str, Enum):
    smedit = "smedit"
    ftl = "ft-l"
    none = "no-edit"


class DataFormat(str, Enum):
    auto = "auto"
    zsre = "zsre"
    knowedit = "knowedit"
    counterfact = "counterfact"
    jsonl = "jsonl"


def _load(data: Path, fmt: DataFormat, limit: int | None):
    from editor_core.data import DataFormatError, load_edits

    try:
        requests = load_edits(data, fmt.value, skip_blank_targets=True)
    except (DataFormatError, ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return requests[:limit] if limit else requests


# train-editor's flags that a --config file (smedit tune's editor_config.json) may set, as
# (parameter name, TrainConfig field)
CONFIG_FIELDS = {"n_steps": "n_steps", "reg": "reg", "reg_coef": "reg_coef", "l2_metric": "l2_metric",
                 "locality_weight": "locality_weight", "rank": "rank", "batch_size": "batch_size",
                 "max_steps": "max_steps", "meta_lr": "meta_lr", "init_lr": "init_lr", "key_shrinkage": "key_shrinkage",
                 "live_weight": "live_weight", "live_history": "live_history", "val_every": "val_every"}


def _config_file(path: Path, ctx: typer.Context) -> dict:
    """The TrainConfig fields of ``path`` that the command line did not set itself (flags win)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    if not isinstance(values, dict):
        raise typer.BadParameter(f"{path}: expected a JSON object of TrainConfig fields", param_hint="--config")
    out = {}
    for param, field in CONFIG_FIELDS.items():
        source = ctx.get_parameter_source(param)  # typer may vendor click: compare by name, not enum identity
        if field in values and getattr(source, "name", None) != "COMMANDLINE":
            out[field] = values[field]
    if "modules" in values and values["modules"]:
        out["modules"] = list(values["modules"])
    return out


def train_editor(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model directory."),
    data: Path = typer.Option(..., "--data", help="Training edits (zsRE, KnowEdit, CounterFact JSON or JSONL)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory (resumed if it holds one)."),
    fmt: DataFormat = typer.Option(DataFormat.auto, "--format"),
    n_steps: int = typer.Option(2, "--steps", help="Edit steps S (MBPS); 1 = MALMEN."),
    reg: Reg = typer.Option(Reg.l2, "--reg", help="l2 (SMEdit) or kl (MALMEN)."),
    reg_coef: float = typer.Option(1e-3, "--reg-coef", help="Coefficient of the L2 (1e-3 measured on the demo) or KL (try 1.0) term."),
    l2_metric: L2Metric = typer.Option(
        L2Metric.frobenius, "--l2-metric",
        help="How the L2 term measures a shift: frobenius (the paper), key, or locality (mixed with its "
             "effect on the edits' locality prompts; needs probes with answers; the demo uses it)."),
    locality_weight: float = typer.Option(0.5, "--locality-weight", min=0.0, max=1.0,
                                          help="With --l2-metric locality: weight of the locality part."),
    rank: int = typer.Option(64, "--rank"),
    batch_size: int = typer.Option(16, "--batch-size", help="Edits per meta-training step."),
    max_steps: int = typer.Option(300, "--max-steps"),
    meta_lr: float = typer.Option(1e-3, "--meta-lr"),
    init_lr: Optional[float] = typer.Option(
        None, "--init-lr", help="Initial edit step size of the hypernets (default: calibrated on the training edits)."),
    key_shrinkage: float = typer.Option(
        0.1, "--key-shrinkage", min=1e-6, max=1.0,
        help="Share of the identity in the solve's key-covariance ridge (1 = MALMEN's plain ridge; the demo uses 0.03)."),
    preserve: Optional[Path] = typer.Option(
        None, "--preserve",
        help="Facts the model knows (prompt + its own answer, any --format): each edited module's key moment is "
             "fitted on them before training, so edits leave them alone (key_source=corpus)."),
    live_weight: float = typer.Option(
        0.0, "--live-weight", min=0.0, help="How much a live edit's keys weigh in a new edit's solve (0 = off; try 1)."),
    live_history: int = typer.Option(
        0, "--live-history", min=0, help="Train each step as if this many other edits were live (needs --live-weight)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    val_every: int = typer.Option(100, "--val-every"),
    limit: int = typer.Option(0, "--limit", help="Use only the first N records (0 = all)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore an existing checkpoint in --out."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Settings from a JSON file (smedit tune's editor_config.json); flags given win."),
) -> None:
    """Meta-train SMEdit (or MALMEN with --steps 1 --reg kl) hypernetworks for a base model."""
    from editor_core.splits import split_requests
    from editor_core.models import load_model
    from editor_core.train import TrainConfig, meta_train

    requests = _load(data, fmt, limit or None)
    if (reg == Reg.kl or (reg == Reg.l2 and l2_metric == L2Metric.locality)) and not any(
        p.answer for r in requests for p in r.locality
    ):
        what = "--reg kl" if reg == Reg.kl else "--l2-metric locality"
        raise typer.BadParameter(f"{what} needs edits with locality probes that have answers; {data} has none",
                                 param_hint="--data")
    train, val = split_requests(requests, [1 - val_fraction, val_fraction], seed=seed)
    lm, tok = load_model(model, device=device)
    values = dict(n_steps=n_steps, reg=reg.value, reg_coef=reg_coef, rank=rank, batch_size=batch_size,
                  max_steps=max_steps, meta_lr=meta_lr, init_lr=init_lr, val_every=val_every,
                  l2_metric=l2_metric.value, locality_weight=locality_weight, key_shrinkage=key_shrinkage,
                  live_weight=live_weight, live_history=live_history)
    if config is not None:
        values.update(_config_file(config, ctx))
    try:
        cfg = TrainConfig(**values, seed=seed, key_source="corpus" if preserve else "edits",
                          batch_sizes=(1, 4, values["batch_size"]) if values["live_history"] else None)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config" if config else None) from None
    kept = _load(preserve, DataFormat.auto, None) if preserve else None
    console.print(f"{len(train)} training / {len(val)} validation edits; {cfg}")
    meta_train(lm, tok, train, val, cfg, out, progress=True, resume=not fresh, preserve=kept,
               log=lambda e: console.print({k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}))
    console.print(f"[green]saved[/green] {out}")


def protect(
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model directory."),
    editor: Path = typer.Option(..., "--editor", help="Editor checkpoint to start from."),
    out: Path = typer.Option(..., "--out", help="Where to write the new editor checkpoint."),
    preserve: Optional[Path] = typer.Option(
        None, "--preserve", help="Facts the model knows (prompt + its own answer): fit each module's key moment on them."),
    fmt: DataFormat = typer.Option(DataFormat.auto, "--format"),
    live_weight: float = typer.Option(1.0, "--live-weight", min=0.0, help="Weight of live edits' keys in the solve (0 = off)."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N preservation records (0 = all)."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Make an editor protect what the model knows and the edits already live, without retraining."""
    from dataclasses import replace

    from editor_core.editor import SMEditor
    from editor_core.models import load_model

    lm, tok = load_model(model, device=device)
    ed = SMEditor.load(editor, lm, tok)
    if preserve:
        kept = _load(preserve, fmt, limit or None)
        ed.fit_key_moments(kept)
        console.print(f"key moments fitted on {len(kept)} facts")
    ed.config = replace(ed.config, live_weight=live_weight)
    ed.save(out, extra={"derived_from": str(editor)})
    console.print(f"[green]saved[/green] {out} (key source {ed.config.key_source}, live weight {live_weight}, "
                  f"editor id {ed.editor_id})")


def evaluate(
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model directory."),
    data: Path = typer.Option(..., "--data", help="Edits to evaluate."),
    editor: Path = typer.Option(None, "--editor", help="Editor checkpoint (for --method smedit)."),
    method: Method = typer.Option(Method.smedit, "--method"),
    fmt: DataFormat = typer.Option(DataFormat.auto, "--format"),
    batch_size: int = typer.Option(16, "--batch-size", "-n", help="Facts edited at once (n)."),
    sequential: int = typer.Option(1, "--sequential", "-T", help="Batches applied one after another (T)."),
    limit: int = typer.Option(128, "--limit", help="Evaluate the first N records (0 = all)."),
    generation: bool = typer.Option(True, "--generation/--no-generation", help="Also greedy-decode."),
    out: Path = typer.Option(None, "--out", help="Write the JSON report here."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Edit T×n facts with a method and print ES / GS / LS (teacher-forced and generation-based)."""
    from editor_core.baselines import FTLEditor, NoEdit
    from editor_core.editor import SMEditor
    from editor_core.evaluate import evaluate_editing
    from editor_core.models import load_model

    requests = _load(data, fmt, limit or None)
    lm, tok = load_model(model, device=device)
    if method is Method.smedit:
        if editor is None:
            console.print("[red]error:[/red] --editor is required for --method smedit")
            raise typer.Exit(2)
        edit_fn = SMEditor.load(editor, lm, tok).edit
    elif method is Method.ftl:
        edit_fn = FTLEditor(lm, tok).edit
    else:
        edit_fn = NoEdit().edit
    started = time.perf_counter()
    report = evaluate_editing(lm, tok, edit_fn, requests, batch_size=batch_size, sequential=sequential,
                              generation=generation, progress=True)
    report["method"] = method.value
    report["seconds"] = round(time.perf_counter() - started, 2)
    table = Table(title=f"{method.value}: {len(requests)} edits, n={batch_size}, T={sequential}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report["summary"].items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    (console if console.is_terminal else Console(width=200)).print(table)  # piped: keep columns whole
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")
