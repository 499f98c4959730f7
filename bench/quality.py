"""Quality suite on the demo world: every method, the same held-out edits, the same metrics.

    python -m bench.quality [--size tiny|small] [--seeds 0 1 2] [--batch-sizes 1 16] [--quick]

Methods: no-edit, FT-L, the untrained editor (calibrated step size, identity hypernetworks: what
meta-training adds is the gap to it), MALMEN (S=1, KL) and SMEdit (S=1 and S=2, L2), each editor
meta-trained on the world's train-split edits with the seed, and cached by its settings.
Evaluation edits come from the eval-split entities, never seen in meta-training.

Columns: ES/GS token-level teacher-forced (the papers' metric), ``first`` = first answer token,
``gen`` = greedy decoding produces the target; GS on the anchor phrasing (understood by the model
but never seen for these entities) and the unseen phrasing; LS on other entities and on the
edited entity's other relations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import RESULTS, demo_world_model, print_table, write_result
from editor_core.baselines import FTLConfig, FTLEditor, NoEdit
from editor_core.demo import editor_requests, DEMO_SIZES
from editor_core.editor import SMEditor
from editor_core.evaluate import evaluate_editing
from editor_core.train import TrainConfig, calibrate_init_lr, meta_train, warm_normalisers

COLUMNS = ["es", "es_first", "es_gen", "gs_anchor", "gs_anchor_first", "gs_anchor_exact", "gs_unseen",
           "gs_unseen_first", "ls_other", "ls_same"]


def method_configs(max_steps: int, seed: int) -> dict[str, TrainConfig]:
    base = dict(max_steps=max_steps, seed=seed, val_every=max(1, max_steps // 4))
    return {
        "MALMEN S=1 KL": TrainConfig(n_steps=1, reg="kl", reg_coef=1.0, **base),
        "SMEdit S=1 L2": TrainConfig(n_steps=1, reg="l2", reg_coef=1e-3, **base),
        "SMEdit S=2 L2": TrainConfig(n_steps=2, reg="l2", reg_coef=1e-3, **base),
        "SMEdit S=3 L2": TrainConfig(n_steps=3, reg="l2", reg_coef=1e-3, **base),
    }


def trained_editor(model, tok, train, val, cfg: TrainConfig, cache: Path, tag: str) -> SMEditor:
    """Meta-train, or reuse a finished run with identical settings, data and base model."""
    key = hashlib.sha256(json.dumps({"cfg": asdict(cfg), "tag": tag, "n": len(train)}, sort_keys=True).encode())
    out = cache / key.hexdigest()[:12]
    if (out / "editor.json").is_file() and json.loads((out / "editor.json").read_text()).get("train_step") == cfg.max_steps:
        return SMEditor.load(out, model, tok)
    return meta_train(model, tok, train, val, cfg, out, progress=True)


def untrained_editor(model, tok, train, cfg: TrainConfig) -> SMEditor:
    editor = SMEditor(model, tok, cfg.editor_config())
    import random

    rng = random.Random(cfg.seed)
    warm_normalisers(editor, rng.sample(train, min(len(train), 4 * cfg.batch_size)))
    calibrate_init_lr(editor, rng.sample(train, cfg.batch_size), cfg)
    return editor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default="small", choices=sorted(DEMO_SIZES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--n-eval", type=int, default=96, help="held-out edits per setting")
    parser.add_argument("--quick", action="store_true", help="one seed, batch 16, 64 edits, 150 steps")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (names as printed)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.batch_sizes, args.n_eval, args.max_steps = [0], [16], 64, 150

    paths, model, tok, world = demo_world_model(args.data_dir, args.size)
    spec = DEMO_SIZES[args.size]
    cache = RESULTS / "editors" / args.size
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        train, val = editor_requests(world, spec, seed)
        evaluation = world.edit_requests("eval", seed=seed)[: args.n_eval]
        methods = {"no-edit": NoEdit().edit}
        for bound in (0.01, 0.03, 0.1):  # FT-L's norm bound sets its success/locality trade-off
            methods[f"FT-L eps={bound}"] = FTLEditor(model, tok, FTLConfig(norm_bound=bound, lr=bound)).edit
        configs = method_configs(args.max_steps, seed)
        methods["untrained S=2"] = untrained_editor(model, tok, train, configs["SMEdit S=2 L2"]).edit
        for name, cfg in configs.items():
            if args.methods and name not in args.methods:
                continue
            methods[name] = trained_editor(model, tok, train, val, cfg, cache, f"{args.size}-{paths.root}").edit
        for name, edit_fn in methods.items():
            if args.methods and name not in args.methods:
                continue
            for n in args.batch_sizes:
                report = evaluate_editing(model, tok, edit_fn, evaluation, batch_size=n, generation=True)
                results.setdefault(f"{name}|{n}", {}).setdefault("runs", []).append(
                    {"seed": seed, **{k: report["summary"].get(k) for k in COLUMNS},
                     "edit_s": report["timing"]["edit_seconds_mean"]})

    rows = []
    for key, entry in results.items():
        name, n = key.split("|")
        runs = entry["runs"]
        means = {c: statistics.mean(r[c] for r in runs if r[c] is not None) if any(r[c] is not None for r in runs) else None
                 for c in COLUMNS}
        spread = {c: (statistics.stdev([r[c] for r in runs]) if len(runs) > 1 and all(r[c] is not None for r in runs) else 0.0)
                  for c in COLUMNS}
        entry.update({"method": name, "batch": int(n), "mean": means, "std": spread})
        rows.append([name, n] + [means[c] if means[c] is not None else "-" for c in COLUMNS])
    print_table(f"edit quality, demo '{args.size}', seeds {args.seeds}, {args.n_eval} held-out edits",
                ["method", "n"] + COLUMNS, rows)
    path = write_result(f"quality_{args.size}", {
        "size": args.size, "seeds": args.seeds, "max_steps": args.max_steps, "n_eval": args.n_eval,
        "seconds": round(time.perf_counter() - started, 1), "results": list(results.values()),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
