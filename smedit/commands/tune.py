"""``smedit tune``: search the editor's settings on a dev split against targets, within a time budget.

Each trial meta-trains an editor (short: ``--max-steps``) on the train part of ``--data`` and
measures it on the dev part, records of other subjects (``editor_core.splits.split_by_subject``):
edit success (ES), paraphrase success (GS), locality (LS: answers left unchanged) and the edit's
cost (seconds per edited fact). Optuna's multi-objective TPE sampler (seeded) proposes the next
settings: edit steps S, the L2 coefficient, the hypernetworks' rank and how many of the last layers
are edited. No trial starts once ``--budget`` has passed (the running one finishes).

``--preserve FILE`` (facts the model knows, prompt + its own answer) searches the protected recipe
the demo editor uses: each trial fits every edited module's key moment on those facts
(``key_source="corpus"``) and the search adds the solve's key shrinkage. ``--live T`` measures
each trial as a service would run it: T batches applied one after another, all live when scored,
each solve protecting the earlier ones (``live_weight`` 1, trained as if ``(T - 1) x --batch-size``
edits were live, at batch sizes 1, 4 and 16); LS then counts the damage of all T batches.

``--l2-metric`` picks the shift's L2 norm: ``frobenius`` (the paper's plain norm, the default),
``locality`` (the norm plus the output change on the edits' locality probes, whose weight the search
adds; needs probes with answers in ``--data``) or ``search`` (the metric is searched too).
``--enqueue FILE`` measures a known recipe first, under the same conditions as every other trial:
an ``editor_config.json`` of an earlier tune, or a trained editor's ``editor.json`` (its
``train_config``), so the frontier shows where the editor you run today stands.

The frontier (trials no other beats on ES, LS and cost at once) is printed and plotted; the chosen
trial is the cheapest that meets every ``--target`` (or, when none does, the one closest to them).
Its settings go to ``<out>/editor_config.json``, which ``smedit train-editor --config`` takes (to
train it longer or on all the data), and its editor checkpoint is kept in ``<out>/trials/<n>``.
Hold your test records out of ``--data``: tune reads nothing else, so they stay untouched.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer

from smedit.commands.core import DataFormat, _load, console

METRICS = ("es", "gs", "ls")
L2_CHOICES = ("frobenius", "locality", "search")
RANKS = (8, 16, 32, 64)
MAX_S = 3


def parse_budget(text: str) -> float:
    """``90s``, ``30m``, ``2h`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r}: use a duration such as 90s, 30m or 2h", param_hint="--budget")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_targets(items: list[str]) -> dict[str, float]:
    """``["es=0.95", "ls=0.98"]`` -> ``{"es": 0.95, "ls": 0.98}`` (each a share in [0, 1])."""
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if name not in METRICS or not 0.0 <= number <= 1.0:
            raise typer.BadParameter(f"{item!r}: use METRIC=VALUE with METRIC one of {', '.join(METRICS)} and "
                                     "VALUE in [0, 1], e.g. es=0.95", param_hint="--target")
        out[name] = number
    return out


def tune(
    model: Path = typer.Option(..., "--model", help="Local Hugging Face model directory."),
    data: Path = typer.Option(..., "--data", help="Edits to tune on (split by subject into train and dev)."),
    out: Path = typer.Option(Path("tune-out"), "--out", help="Where the trials, the frontier and the chosen config go."),
    fmt: DataFormat = typer.Option(DataFormat.auto, "--format"),
    target: list[str] = typer.Option([], "--target", help="A bar the chosen settings must meet, e.g. es=0.95 (repeatable)."),
    budget: str = typer.Option("30m", "--budget", help="Wall time for the search: 90s, 30m, 2h."),
    trials: int = typer.Option(0, "--trials", min=0, help="At most this many trials (0 = until the budget)."),
    max_steps: int = typer.Option(100, "--max-steps", min=1, help="Meta-training steps per trial."),
    max_layers: int = typer.Option(6, "--max-layers", min=1, help="Largest number of last layers a trial edits."),
    n_dev: int = typer.Option(64, "--n-dev", min=1, help="Dev edits each trial is measured on."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Edits per edit() call when measuring."),
    dev_fraction: float = typer.Option(0.2, "--dev-fraction", min=0.01, max=0.9),
    preserve: Optional[Path] = typer.Option(
        None, "--preserve", help="Facts the model knows (prompt + its own answer): trials protect them "
                                 "(key_source=corpus) and the search adds the key shrinkage."),
    live: int = typer.Option(1, "--live", min=1, help="Batches applied one after another and scored all live "
                                                       "(>1: each solve protects the earlier batches)."),
    l2_metric: str = typer.Option("frobenius", "--l2-metric", help="The shift's L2 norm: frobenius (the paper's), "
                                  "locality (adds the locality weight to the search) or search (both)."),
    enqueue: Optional[Path] = typer.Option(
        None, "--enqueue", help="Measure this recipe first (an editor_config.json, or a trained editor's "
                                "editor.json), so the frontier shows where it stands."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N records (0 = all)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Search S, the L2 coefficient, the rank and the edited layers on a dev split; print the frontier."""
    seconds = parse_budget(budget)
    targets = parse_targets(target)
    if l2_metric not in L2_CHOICES:
        raise typer.BadParameter(f"{l2_metric!r}: use one of {', '.join(L2_CHOICES)}", param_hint="--l2-metric")
    try:
        import optuna
    except ImportError:
        console.print("[red]error:[/red] smedit tune needs Optuna: pip install 'smedit[server]'")
        raise typer.Exit(2) from None
    from editor_core.arch import layer_count
    from editor_core.models import load_model
    from editor_core.splits import split_by_subject

    requests = _load(data, fmt, limit or None)
    kept = _load(preserve, DataFormat.auto, None) if preserve else None
    if kept is not None and not kept:
        console.print(f"[red]error:[/red] --preserve {preserve} holds no facts (prompt + its answer) to protect")
        raise typer.Exit(2)
    train, dev = split_by_subject(requests, [1 - dev_fraction, dev_fraction], seed=seed)
    if len(train) < 2 or not dev:
        console.print(f"[red]error:[/red] {data} has too few records to split ({len(train)} train, {len(dev)} dev)")
        raise typer.Exit(2)
    dev = dev[:n_dev]
    if len(dev) < live:
        console.print(f"[red]error:[/red] --live {live} needs at least {live} dev edits (one batch each); "
                      f"the dev split has {len(dev)}: lower --live or raise --n-dev / --dev-fraction")
        raise typer.Exit(2)
    if l2_metric != "frobenius" and not all(r.locality and all(p.answer for p in r.locality) for r in train):
        console.print(f"[red]error:[/red] --l2-metric {l2_metric} needs locality probes with answers in every "
                      f"record of {data} (the norm measures the output change on them)")
        raise typer.Exit(2)
    lm, tok = load_model(model, device=device)
    layers = min(max_layers, layer_count(lm))
    space = SearchSpace(layers=layers, protect=kept is not None, l2_metric=l2_metric)
    first = None
    if enqueue is not None:
        try:
            first = space.params_of(_recipe(enqueue), lm)
        except ValueError as exc:
            console.print(f"[red]error:[/red] --enqueue {enqueue}: {exc}")
            raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"tuning on {len(train)} train / {len(dev)} dev edits (split by subject, seed {seed}); "
                  f"budget {seconds:.0f} s, targets {targets or 'none'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if first is not None:
        study.enqueue_trial(first)
        console.print(f"trial 0 is the recipe of {enqueue}: {first}")
    started = time.monotonic()

    def objective(trial: Any) -> tuple[float, float, float]:
        cfg = space.config(trial, lm, max_steps, seed, batch=min(16, len(train)),
                           live_history=(live - 1) * batch_size)
        scores = _train_and_measure(lm, tok, train, dev, cfg, out / "trials" / str(trial.number), batch_size,
                                    kept, live)
        for key, value in scores.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("config", _config_json(cfg))
        console.print(f"trial {trial.number}: S={cfg.n_steps} reg={cfg.reg_coef:.2g} rank={cfg.rank} "
                      f"layers={len(cfg.modules or [])}"
                      + (f" shrinkage={cfg.key_shrinkage:.2g}" if kept is not None else "")
                      + (f" norm={cfg.l2_metric}" + (f"({cfg.locality_weight:.2g})" if cfg.l2_metric == "locality"
                                                     else "") if l2_metric != "frobenius" else "")
                      + f" -> es {scores['es']:.3f} gs {scores['gs']:.3f} "
                      f"ls {scores['ls']:.3f}, {scores['edit_s_per_fact'] * 1000:.1f} ms/fact "
                      f"({time.monotonic() - started:.0f} s of {seconds:.0f})")
        return scores["es"], scores["ls"], scores["edit_s_per_fact"]

    study.optimize(objective, n_trials=trials or None, timeout=seconds, show_progress_bar=False)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        console.print("[red]error:[/red] no trial finished within the budget; raise --budget or lower --max-steps")
        raise typer.Exit(1)
    frontier = sorted({t.number for t in study.best_trials})
    chosen = choose(done, targets)
    _report(done, frontier, chosen, targets, out, {"preserve": str(preserve) if preserve else None, "live": live,
                                                   "enqueued": str(enqueue) if enqueue else None})


class SearchSpace:
    """What a trial may set, and the TrainConfig it trains; one place for the ranges, so a recipe
    given with ``--enqueue`` is checked against the same ranges the sampler draws from."""

    REG = (1e-5, 1e-1)
    SHRINKAGE = (1e-3, 0.3)
    LOCALITY_WEIGHT = (0.1, 0.95)

    def __init__(self, layers: int, protect: bool, l2_metric: str) -> None:
        self.layers, self.protect, self.l2_metric = layers, protect, l2_metric

    def config(self, trial: Any, lm: Any, max_steps: int, seed: int, batch: int, live_history: int = 0):
        from editor_core.arch import last_layer_modules
        from editor_core.train import TrainConfig

        metric = (trial.suggest_categorical("l2_metric", ["frobenius", "locality"]) if self.l2_metric == "search"
                  else self.l2_metric)
        return TrainConfig(
            n_steps=trial.suggest_int("n_steps", 1, MAX_S),
            reg="l2",
            reg_coef=trial.suggest_float("reg_coef", *self.REG, log=True),
            rank=trial.suggest_categorical("rank", list(RANKS)),
            modules=last_layer_modules(lm, trial.suggest_int("layers", 1, self.layers)),
            l2_metric=metric,
            locality_weight=trial.suggest_float("locality_weight", *self.LOCALITY_WEIGHT)
            if metric == "locality" else 0.5,
            max_steps=max_steps, val_every=max_steps, seed=seed, batch_size=batch,
            key_source="corpus" if self.protect else "edits",
            key_shrinkage=trial.suggest_float("key_shrinkage", *self.SHRINKAGE, log=True) if self.protect else 0.1,
            live_weight=1.0 if live_history else 0.0, live_history=live_history,
            batch_sizes=tuple(sorted({1, 4, batch})) if live_history else None,
        )

    def params_of(self, recipe: dict, lm: Any) -> dict:
        """The trial parameters that reproduce ``recipe`` (TrainConfig fields); ValueError names
        the first setting this search cannot express."""
        from editor_core.arch import last_layer_modules, paper_modules
        from editor_core.train_config import TrainConfig

        def within(name: str, value: Any, low: float, high: float) -> Any:
            if not low <= value <= high:
                raise ValueError(f"{name} {value} is outside the search's range [{low:g}, {high:g}]")
            return value

        if recipe.get("reg", "l2") != "l2":
            raise ValueError(f"reg {recipe['reg']!r}: tune searches the L2 regulariser only")
        if recipe.get("key_source") == "corpus" and not self.protect:
            raise ValueError("the recipe protects what the model knows (key_source corpus): pass --preserve FILE "
                             "(the facts it was trained to protect) to search the protected recipe")
        if recipe.get("key_source") != "corpus" and self.protect:
            raise ValueError("the recipe protects nothing (key_source edits) while --preserve searches the "
                             "protected recipe: drop --preserve to measure it")
        defaults = TrainConfig()
        fixed = {"precondition", "meta_lr", "init_lr", "n_blocks", "max_length"} | (
            set() if self.protect else {"key_shrinkage"})
        for name in sorted(fixed):  # what every trial trains with: a recipe that differs is not measured
            if name in recipe and recipe[name] != getattr(defaults, name):
                raise ValueError(f"{name} {recipe[name]!r} differs from the {getattr(defaults, name)!r} every trial "
                                 "trains with (tune does not search it), so trial 0 would not be this recipe")
        modules = recipe.get("modules") or paper_modules(lm)  # what the editor edits when none are named
        n_layers = len(modules)
        if n_layers > self.layers or modules != last_layer_modules(lm, n_layers):
            raise ValueError(f"modules {modules}: tune searches the MLP outputs of the last 1..{self.layers} layers "
                             "(raise --max-layers if the recipe edits more of them)")
        if recipe.get("rank", 64) not in RANKS:
            raise ValueError(f"rank {recipe['rank']} is not one of {list(RANKS)}")
        params = {"n_steps": within("n_steps", recipe.get("n_steps", 2), 1, MAX_S),
                  "reg_coef": within("reg_coef", recipe.get("reg_coef", 1e-3), *self.REG),
                  "rank": recipe.get("rank", 64), "layers": n_layers}
        metric = recipe.get("l2_metric", "frobenius")
        if metric not in ("frobenius", "locality"):
            raise ValueError(f"l2_metric {metric!r}: tune searches the frobenius and locality norms only")
        if self.l2_metric == "search":
            params["l2_metric"] = metric
        elif metric != self.l2_metric:
            raise ValueError(f"l2_metric {metric!r} is outside the search (--l2-metric {self.l2_metric}); "
                             f"pass --l2-metric {metric} or search")
        if metric == "locality":
            params["locality_weight"] = within("locality_weight", recipe.get("locality_weight", 0.5),
                                               *self.LOCALITY_WEIGHT)
        if self.protect:
            params["key_shrinkage"] = within("key_shrinkage", recipe.get("key_shrinkage", 0.1), *self.SHRINKAGE)
        return params


def _recipe(path: Path) -> dict:
    """TrainConfig fields from an editor_config.json or a trained editor's editor.json."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if isinstance(values, dict) and isinstance(values.get("train_config"), dict):
        values = values["train_config"]
    if not isinstance(values, dict) or "n_steps" not in values:
        raise ValueError("expected an editor_config.json (smedit tune) or an editor.json with a train_config")
    return values


def _train_and_measure(lm: Any, tok: Any, train: list, dev: list, cfg: Any, out: Path, batch_size: int,
                       preserve: list | None = None, live: int = 1) -> dict:
    from editor_core.evaluate import evaluate_editing
    from editor_core.train import meta_train

    editor = meta_train(lm, tok, train, dev[: max(1, len(dev) // 2)], cfg, out, progress=False, resume=False,
                        preserve=preserve)
    n = min(batch_size, len(dev) // live)  # groups of ``live`` batches, each group all live when scored
    report = evaluate_editing(lm, tok, editor.edit, dev, batch_size=n, sequential=live, generation=False,
                              pass_live=live > 1)
    summary, timing = report["summary"], report["timing"]
    per_fact = timing["edit_seconds_mean"] / max(1, n)
    return {**{m: float(summary.get(m) or 0.0) for m in METRICS}, "edit_s_per_fact": per_fact}


def _config_json(cfg: Any) -> dict:
    values = asdict(cfg)
    values["batch_sizes"] = list(values["batch_sizes"]) if values["batch_sizes"] else None
    return values


def choose(trials: list, targets: dict[str, float]) -> Any:
    """The cheapest trial meeting every target; else the one whose worst shortfall is smallest."""
    def shortfall(t: Any) -> float:
        return max([targets[m] - t.user_attrs[m] for m in targets] + [0.0])

    meeting = [t for t in trials if shortfall(t) == 0.0]
    if meeting:
        return min(meeting, key=lambda t: t.user_attrs["edit_s_per_fact"])
    return min(trials, key=lambda t: (shortfall(t), t.user_attrs["edit_s_per_fact"]))


def _report(trials: list, frontier: list[int], chosen: Any, targets: dict[str, float], out: Path,
            conditions: dict) -> None:
    from rich.table import Table

    table = Table(title="smedit tune: trials on the dev split (* = on the frontier, > = chosen)")
    protect = "key_shrinkage" in chosen.params  # --preserve: the search's fifth setting
    norm = any(t.user_attrs["config"]["l2_metric"] != "frobenius" for t in trials)
    for column in ("", "trial", "S", "reg", "rank", "layers", *(["shrinkage"] if protect else []),
                   *(["norm"] if norm else []), "es", "gs", "ls", "ms/fact"):
        table.add_column(column, no_wrap=True)
    for t in sorted(trials, key=lambda t: -t.user_attrs["es"]):
        mark = (">" if t.number == chosen.number else "") + ("*" if t.number in frontier else "")
        a, p, cfg = t.user_attrs, t.params, t.user_attrs["config"]
        table.add_row(mark, str(t.number), str(p["n_steps"]), f"{p['reg_coef']:.1e}", str(p["rank"]), str(p["layers"]),
                      *([f"{p['key_shrinkage']:.1e}"] if protect else []),
                      *([cfg["l2_metric"] + (f" {cfg['locality_weight']:.2f}" if cfg["l2_metric"] == "locality"
                                             else "")] if norm else []),
                      f"{a['es']:.3f}", f"{a['gs']:.3f}", f"{a['ls']:.3f}", f"{a['edit_s_per_fact'] * 1000:.1f}")
    console.print(table, width=max(console.width, 120))  # numbers cut to "0.00…" are worse than a wide line
    met = all(chosen.user_attrs[m] >= v for m, v in targets.items())
    config = {**chosen.user_attrs["config"], "tuned": {
        "trial": chosen.number, "targets": targets, "targets_met": met, **conditions,
        "dev": {m: chosen.user_attrs[m] for m in (*METRICS, "edit_s_per_fact")}}}
    (out / "editor_config.json").write_text(json.dumps(config, indent=2))
    rows = [{"trial": t.number, "params": t.params, **t.user_attrs, "frontier": t.number in frontier} for t in trials]
    (out / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    plot = _plot(trials, frontier, chosen, out / "frontier.png")
    verdict = "meets every target" if met else "[yellow]no trial meets every target: the closest is chosen[/yellow]"
    console.print(f"chosen: trial {chosen.number} ({verdict}); its editor: {out / 'trials' / str(chosen.number)}")
    takes = "smedit train-editor --config takes it" + (
        f", with --preserve {conditions['preserve']}" if conditions.get("preserve") else "")
    console.print(f"wrote {out / 'editor_config.json'} ({takes}), {out / 'trials.json'}" + (f", {plot}" if plot else ""))


def _plot(trials: list, frontier: list[int], chosen: Any, path: Path) -> Optional[Path]:
    """Edit success against locality, marker size = cost; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for t in trials:
        a = t.user_attrs
        ax.scatter(a["ls"], a["es"], s=20 + 2000 * a["edit_s_per_fact"],
                   c="tab:red" if t.number == chosen.number else "tab:blue" if t.number in frontier else "tab:gray",
                   alpha=0.7)
        ax.annotate(str(t.number), (a["ls"], a["es"]), fontsize=7)
    ax.set_xlabel("LS (dev)")
    ax.set_ylabel("ES (dev)")
    ax.set_title("smedit tune: blue = frontier, red = chosen, size = cost per fact")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
