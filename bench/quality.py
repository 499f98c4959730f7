"""Quality suite on the demo world: every method, the same edits, the same metrics.

    python -m bench.quality [--size tiny|small] [--split dev|test] [--seeds 0 1 2 3 4]
        [--batch-sizes 1 16 128] [--json FILE] [--quick]

Methods: no-edit, FT-L, MEMIT (training-free, closed form, ``editor_core.memit``), the untrained editor (calibrated step size, identity hypernetworks: what
meta-training adds is the gap to it), MALMEN (S=1, KL, plain ridge) and SMEdit (S=1 and S=2, L2),
each editor meta-trained on the world's train-split edits with the seed, and cached by its settings.

Splits (entities disjoint): meta-training edits train entities; ``--split dev`` evaluates the
editors' validation entities (never meta-trained on: choose settings here), ``--split test`` the
eval entities (report once per configuration).

Columns: ES/GS token-level teacher-forced (the papers' metric), ``first`` = first answer token,
``gen`` = greedy decoding produces the target; GS on the anchor phrasing (understood by the model
but never seen for these entities) and the unseen phrasing (never pretrained); LS ("unchanged vs
before the edit", WISE-style) and Spec (token accuracy of the TRUE answer, the papers'
Specificity) on other entities and on the edited entity's other relations. The printed ceiling is
the unedited model's accuracy of the true answers on the same phrasings: GS cannot be expected
above it. ``fluency``: n-gram entropy (bits, ROME's) of the edited prompt and its greedy
32-token continuation past end-of-text (``editor_core.fluency``): compare with the no-edit row.
Every entry has mean, std and a 95 % confidence half-width (t, over seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import ci95, demo_world_model, print_table, resolve_size, results_dir, write_with_plots
from editor_core.baselines import FTLConfig, FTLEditor, NoEdit
from demo_world.build import DEMO_SIZES, editor_requests, preservation_requests
from editor_core.editor import SMEditor
from editor_core.evaluate import evaluate_editing, paraphrase_ceiling
from editor_core.memit import MEMITConfig, MEMITEditor
from editor_core.train import CALIBRATION_BATCHES, TrainConfig, calibrate_init_lr, meta_train, warm_normalisers

COLUMNS = ["es", "es_first", "es_gen", "gs_anchor", "gs_anchor_first", "gs_anchor_exact", "gs_unseen",
           "gs_unseen_first", "ls_other", "ls_same", "spec_other", "spec_same", "fluency"]
SPLITS = ("dev", "test")


def method_configs(max_steps: int, seed: int, modules: list[str] | None = None) -> dict[str, TrainConfig]:
    base = dict(max_steps=max_steps, seed=seed, val_every=max(1, max_steps // 4), modules=modules)
    plain = dict(precondition="none", key_shrinkage=1.0)  # the papers' solve: a plain ridge, no key covariance
    return {
        # MALMEN as published: one step, KL, the plain ridge; rows named so before 2026-12-02 used
        # this project's key-covariance ridge ("... precondition=full key_shrinkage=0.1")
        "MALMEN S=1 KL": TrainConfig(n_steps=1, reg="kl", reg_coef=1.0, **plain, **base),
        # SMEdit as published: S steps, L2 (Frobenius) on the shift, the plain ridge; rows named so
        # before 2026-12-03 used the key-covariance ridge, now the "+cov" rows
        "SMEdit S=1 L2": TrainConfig(n_steps=1, reg="l2", reg_coef=1e-3, **plain, **base),
        "SMEdit S=2 L2": TrainConfig(n_steps=2, reg="l2", reg_coef=1e-3, **plain, **base),
        "SMEdit S=3 L2": TrainConfig(n_steps=3, reg="l2", reg_coef=1e-3, **plain, **base),
        # this project's variant: the ridge weighted by the edited module's key covariance (shrunk)
        "SMEdit S=2 L2 +cov": TrainConfig(n_steps=2, reg="l2", reg_coef=1e-3, precondition="full", key_shrinkage=0.1,
                                          **base),
    }


def trains_at_test_batch(name: str) -> bool:
    """MALMEN is meta-trained at the batch size it is tested at (as in its paper); the SMEdit rows
    at one batch size for every test batch (the service's conditions)."""
    return name.startswith("MALMEN")


DEFAULT_METHODS = ["no-edit", "FT-L eps=0.01", "FT-L eps=0.03", "FT-L eps=0.1", "MEMIT", "untrained S=2", "MALMEN S=1 KL",
                   "SMEdit S=1 L2", "SMEdit S=2 L2", "SMEdit S=3 L2", "SMEdit S=2 L2 +cov"]


def demo_modules(model, spec, layers: int | None = None) -> list[str] | None:
    """The modules every method edits: the MLP outputs of the last ``layers`` layers, by default
    those the demo's own editors edit (``spec.edit_layers``; None: the library default)."""
    from editor_core.arch import last_layer_modules

    layers = layers if layers is not None else spec.edit_layers
    return last_layer_modules(model, layers) if layers is not None else None


def trained_editor(model, tok, train, val, cfg: TrainConfig, cache: Path, tag: str,
                   extra: dict | None = None, progress: bool = True, preserve=None) -> SMEditor:
    """Meta-train, or reuse a finished run with identical settings, data and base model.

    ``extra`` joins the cache key (e.g. ``{"fraction": 0.05}`` for low-data runs, or the data
    file of a real-data run); without it the key is the one earlier runs used.
    """
    from editor_core.hypernet import TRAINING_VERSION

    ident = {"cfg": asdict(cfg), "tag": tag, "n": len(train), "training": TRAINING_VERSION}
    if extra:
        ident["extra"] = extra
    if cfg.key_source == "corpus":
        ident["preserve"] = _digest_requests(preserve)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    out = cache / key.hexdigest()[:12]
    if (out / "editor.json").is_file() and json.loads((out / "editor.json").read_text()).get("train_step") == cfg.max_steps:
        return SMEditor.load(out, model, tok)
    return meta_train(model, tok, train, val, cfg, out, progress=progress, preserve=preserve)


def _digest_requests(requests) -> str:
    digest = hashlib.sha256()
    for r in requests or []:
        digest.update(f"{r.prompt}\x00{r.target}\x01".encode())
    return digest.hexdigest()[:16]


def wants_live(edit_fn) -> bool:
    """Whether ``edit_fn`` is an editor's ``edit`` that protects live edits (the harness must
    then pass them: ``evaluate_editing(..., pass_live=True)``)."""
    editor = getattr(edit_fn, "__self__", None)
    return isinstance(editor, SMEditor) and editor.config.live_weight > 0


def effective_batch(n: int, available: int, what: str = "held-out edits") -> int:
    """Batch size ``n`` clamped to the edits there are, saying so (a batch of 128 needs 128 edits)."""
    if n > available:
        print(f"note: batch n={n} is larger than the {available} {what}: clamped to n={available} "
              f"(raise --n-eval or use a bigger --size for a full batch)")
        return available
    return n


def summarise(results: dict[str, dict], columns: list[str]) -> list[list]:
    """Fill ``mean``/``std`` of every ``{"runs": [...]}`` entry (over seeds); return table rows."""
    rows = []
    for entry in results.values():
        runs = entry["runs"]
        means = {c: statistics.mean(r[c] for r in runs if r.get(c) is not None)
                 if any(r.get(c) is not None for r in runs) else None for c in columns}
        spread = {c: (statistics.stdev([r[c] for r in runs])
                      if len(runs) > 1 and all(r.get(c) is not None for r in runs) else 0.0) for c in columns}
        half = {c: ci95([r[c] for r in runs]) if all(r.get(c) is not None for r in runs) else None for c in columns}
        entry.update({"mean": means, "std": spread, "ci95": half})
        rows.append([means[c] if means[c] is not None else "-" for c in columns])
    return rows


def untrained_editor(model, tok, train, cfg: TrainConfig, preserve=None) -> SMEditor:
    editor = SMEditor(model, tok, cfg.editor_config())
    import random

    if cfg.key_source == "corpus":
        if not preserve:
            raise ValueError("key_source=corpus needs the facts the model knows (no preservation set here)")
        editor.fit_key_moments(preserve)
    rng = random.Random(cfg.seed)
    warm_normalisers(editor, rng.sample(train, min(len(train), 4 * cfg.batch_size)))
    calibrate_init_lr(editor, rng.sample(train, min(len(train), CALIBRATION_BATCHES * cfg.batch_size)), cfg)
    return editor


# Options a method name may end with, e.g. "SMEdit S=2 L2 reg=5e-4 max_steps=400": TrainConfig
# fields (``reg=C`` sets the coefficient, as the L2/KL choice is part of the method's name).
OPTION_FIELDS = ("reg", "meta_lr", "rank", "n_blocks", "max_steps", "batch_size", "init_lr", "l2_metric",
                 "locality_weight", "precondition", "key_shrinkage", "key_source", "live_weight", "live_history")


def memit_config(name: str, modules: list[str] | None) -> MEMITConfig:
    """``"MEMIT mom2_weight=1e3 v_steps=40"`` -> its config (any ``MEMITConfig`` field but modules)."""
    from dataclasses import fields

    types = {f.name: f.type for f in fields(MEMITConfig) if f.name != "modules"}
    values: dict = {}
    for word in name.split(" ")[1:]:
        key, _, value = word.partition("=")
        if key not in types or not value:
            raise ValueError(f"method {name!r}: unknown MEMIT option {word!r} (use {', '.join(types)})")
        try:
            values[key] = int(value) if str(types[key]) == "int" else float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: {key}= wants a number, got {value!r}") from None
    return MEMITConfig(modules=modules, **values)


def split_options(name: str) -> tuple[str, dict]:
    """``"SMEdit S=2 L2 reg=5e-4 meta_lr=3e-3"`` -> ``("SMEdit S=2 L2", {"reg_coef": 5e-4, "meta_lr": 3e-3})``."""
    from dataclasses import fields

    types = {f.name: f.type for f in fields(TrainConfig)}
    words = name.split(" ")
    overrides: dict = {}
    while words and "=" in words[-1] and words[-1].split("=", 1)[0] in OPTION_FIELDS:
        key, value = words.pop().split("=", 1)
        field = "reg_coef" if key == "reg" else key
        kind = str(types[field])
        try:
            overrides[field] = int(value) if kind == "int" else value if kind == "str" else float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: {key}= wants a number, got {value!r}") from None
    return " ".join(words), overrides


def make_method(name: str, model, tok, train, val, *, max_steps: int, seed: int, modules: list[str] | None,
                cache: Path, tag: str, extra: dict | None = None, batch_size: int | None = None,
                progress: bool = True, preserve=None):
    """``edit_fn`` of the method printed as ``name`` (no-edit, FT-L eps=B, untrained S=2, or a
    meta-trained one of :func:`method_configs`), training or reusing the editor as needed.

    ``batch_size`` overrides the meta-training batch (low-data runs have fewer edits than 16).
    ``preserve``: what the base model knows, for ``key_source=corpus`` (the base's own corpus).
    """
    from dataclasses import replace

    if name == "no-edit":
        return NoEdit().edit
    if name == "MEMIT" or name.startswith("MEMIT "):
        if not preserve:
            raise ValueError(f"method {name!r}: MEMIT needs the facts the model knows (no preservation set here)")
        return MEMITEditor(model, tok, memit_config(name, modules)).fit(preserve).edit
    if name.startswith("FT-L eps="):
        bound = float(name.split("=", 1)[1])
        return FTLEditor(model, tok, FTLConfig(norm_bound=bound, lr=bound, modules=modules)).edit
    base_name, overrides = split_options(name)
    configs = method_configs(max_steps, seed, modules)
    if base_name in ("untrained S=2", "untrained S=2 +cov"):  # the SMEdit row's solve, identity hypernetworks
        source = configs["SMEdit S=2 L2" + base_name[len("untrained S=2"):]]
        return untrained_editor(model, tok, train, replace(source, **overrides), preserve).edit
    if base_name not in configs:
        raise ValueError(f"unknown method {name!r}; use no-edit, FT-L eps=B, untrained S=2 [+cov] or one of "
                         f"{sorted(configs)}, optionally followed by options such as ' reg=C' "
                         f"(any of {', '.join(OPTION_FIELDS)})")
    cfg = replace(configs[base_name], **overrides)
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    if cfg.key_source == "corpus" and not preserve:
        raise ValueError(f"method {name!r}: key_source=corpus needs the facts the model knows (no preservation set here)")
    return trained_editor(model, tok, train, val, cfg, cache, tag, extra=extra, progress=progress, preserve=preserve).edit


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, choices=sorted(DEMO_SIZES), help="demo size (default: small; tiny with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 128],
                        help="edits per edit() call; one larger than --n-eval is clamped to it")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--n-eval", type=int, default=128, help="held-out edits per setting")
    parser.add_argument("--quick", action="store_true", help="tiny demo, one seed, batch 16, 64 edits, 150 steps")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only these methods (names as printed), each optionally followed by training "
                             "options, e.g. 'SMEdit S=2 L2 reg=5e-4 max_steps=400'")
    parser.add_argument("--edit-layers", type=int, default=None,
                        help="edit the MLP outputs of the last K layers instead of the demo editors' layers "
                             "(results go to quality_<size>_layers<K>.json)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="dev: the editors' validation entities (choose settings here); test: the held-out "
                             "eval entities (report, once per configuration)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results here (always: bench/results/quality_<size>[_dev][_layers<K>].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.batch_sizes, args.n_eval, args.max_steps = [0], [16], 64, 150
    resolve_size(args)
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be >= 1")

    paths, model, tok, world = demo_world_model(args.data_dir, args.size)
    spec = DEMO_SIZES[args.size]
    cache = results_dir() / "editors" / args.size
    results: dict[str, dict] = {}
    ceilings: dict[str, list[float | None]] = {}  # the base model's own accuracy, per paraphrase group
    started = time.perf_counter()
    for seed in args.seeds:
        train, val = editor_requests(world, spec, seed)
        evaluation = (val if args.split == "dev" else world.edit_requests("eval", seed=seed))[: args.n_eval]
        if len(evaluation) < args.n_eval:
            print(f"note: the '{args.size}' world's {args.split} split has {len(evaluation)} edits "
                  f"(asked for {args.n_eval})")
        for key, value in paraphrase_ceiling(model, tok, evaluation).items():
            ceilings.setdefault(key, []).append(value)
        modules = demo_modules(model, spec, args.edit_layers)
        names = args.methods or DEFAULT_METHODS
        built: dict[tuple[str, int | None], object] = {}
        for name in names:
            for n in args.batch_sizes:
                n_eff = effective_batch(n, len(evaluation))
                key = (name, min(n_eff, len(train)) if trains_at_test_batch(name) else None)
                if key not in built:
                    built[key] = make_method(name, model, tok, train, val, max_steps=args.max_steps, seed=seed,
                                             modules=modules, cache=cache, tag=f"{args.size}-{paths.root}",
                                             batch_size=key[1], preserve=preservation_requests(world, seed))
                edit_fn = built[key]
                report = evaluate_editing(model, tok, edit_fn, evaluation, batch_size=n_eff, generation=True,
                                          pass_live=wants_live(edit_fn))
                entry = results.setdefault(f"{name}|{n}", {"method": name, "batch": n, "batch_effective": n_eff})
                entry.setdefault("runs", []).append(
                    {"seed": seed, **{k: report["summary"].get(k) for k in COLUMNS},
                     "edit_s": report["timing"]["edit_seconds_mean"]})

    rows = [[e["method"], e["batch"]] + row for e, row in zip(results.values(), summarise(results, COLUMNS))]
    ceiling = {k: statistics.mean(v) for k, v in ceilings.items() if v and all(x is not None for x in v)}
    print_table(f"edit quality, demo '{args.size}', {args.split} split, seeds {args.seeds}, {args.n_eval} edits",
                ["method", "n"] + COLUMNS, rows)
    print("ceiling (the unedited model's token accuracy of the TRUE answer on these phrasings): "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(ceiling.items())))
    from bench.plots import plot_quality

    suffix = ("_dev" if args.split == "dev" else "") + (f"_layers{args.edit_layers}" if args.edit_layers is not None else "")
    payload = {
        "size": args.size, "split": args.split, "edit_modules": demo_modules(model, spec, args.edit_layers),
        "seeds": args.seeds, "max_steps": args.max_steps, "n_eval": args.n_eval, "n_eval_used": len(evaluation),
        "ceiling": ceiling, "seconds": round(time.perf_counter() - started, 1), "results": list(results.values()),
    }
    path, _ = write_with_plots(f"quality_{args.size}{suffix}", payload, plot_quality)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(path.read_text())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
