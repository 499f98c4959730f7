"""Low-data suite on the demo world: hypernetworks meta-trained on 5%, 25% and 100% of the edits.

    python -m bench.lowdata [--size tiny|small] [--fractions 0.05 0.25 1] [--seeds 0] [--quick]

Each method (SMEdit S=2 L2, MALMEN S=1 KL, SMEdit S=1 L2) is meta-trained for the same number of
steps on a seeded subsample of the train-split edits (``editor_core.splits.subsample``: with one
seed a smaller share is a subset of a larger one) and evaluated on the same held-out edits of the
eval split, in batches of ``--batch-size``. When a share has fewer edits than the meta-training
batch (16), the batch shrinks to the share (``train_batch`` in the JSON). Editors are cached with
the quality suite's (``bench/results/editors/<size>/``); the key includes the fraction, and 100%
is the quality suite's own editor (same data, same key).

Columns as in ``bench.quality``. Writes ``lowdata_<size>.json`` and ``lowdata_<size>_curve.png``.

Seeds run in separate processes (or machines) pool with ``--merge A.json B.json ...`` (also the
low-data files of ``bench.realdata --fractions``, with their own columns): nothing is
trained; the runs are joined per (method, fraction) and the table, mean, std and ci95 are those of
one run over all their seeds (written as ``lowdata_<size>_merged.json``). Files must agree on the
size, steps and evaluation edits; a seed present in two files is refused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import demo_world_model, print_table, resolve_size, results_dir, write_with_plots
from bench.quality import demo_modules, effective_batch, make_method, summarise

COLUMNS = ["es", "es_first", "es_gen", "gs", "gs_anchor", "gs_unseen", "ls", "ls_other", "ls_same"]
DEFAULT_METHODS = ["SMEdit S=2 L2", "MALMEN S=1 KL", "SMEdit S=1 L2"]
DEFAULT_FRACTIONS = [0.05, 0.25, 1.0]
TRAIN_BATCH = 16  # TrainConfig's default meta-training batch


def run_lowdata(model, tok, train, val, evaluation, fractions: list[float], methods: list[str], *, batch: int,
                max_steps: int, seed: int, modules, cache: Path, tag: str, generation: bool = True,
                progress: bool = True, results: dict | None = None) -> dict:
    """Meta-train every method on every share of ``train``; evaluate on ``evaluation``."""
    from editor_core.splits import subsample
    from editor_core.evaluate import evaluate_editing

    results = {} if results is None else results
    n = effective_batch(batch, len(evaluation))
    for fraction in sorted(fractions):
        share = subsample(train, fraction, seed=seed)
        train_batch = min(TRAIN_BATCH, len(share))
        for name in methods:
            started = time.perf_counter()
            edit_fn = make_method(name, model, tok, share, val, max_steps=max_steps, seed=seed, modules=modules,
                                  cache=cache, tag=tag, extra={"fraction": fraction} if fraction < 1 else None,
                                  batch_size=None if train_batch == TRAIN_BATCH else train_batch, progress=progress)
            train_s = time.perf_counter() - started
            report = evaluate_editing(model, tok, edit_fn, evaluation, batch_size=n, generation=generation,
                                      progress=progress)
            entry = results.setdefault(f"{name}|{fraction}", {
                "method": name, "fraction": fraction, "n_train": len(share), "train_batch": train_batch,
                "batch": n})
            entry.setdefault("runs", []).append(
                {"seed": seed, **{k: report["summary"].get(k) for k in COLUMNS},
                 "edit_s": report["timing"]["edit_seconds_mean"], "train_or_load_s": round(train_s, 1)})
    return results


# what must agree for runs to pool (the last four: bench.realdata --fractions files; absent in the demo's)
MERGE_KEYS = ("size", "max_steps", "n_eval", "generation", "split", "preserve", "data", "sequential")
ENTRY_KEYS = ("n_train", "train_batch", "batch")  # and per (method, fraction)


def merge_results(payloads: list[dict]) -> dict:
    """One lowdata payload from several: runs joined per (method, fraction); raises ValueError on
    runs that cannot pool (other settings, or one seed twice)."""
    if not all(isinstance(p, dict) and "results" in p for p in payloads):
        raise ValueError("not a bench.lowdata result file (bench/results/lowdata_<size>.json)")
    if not all("fraction" in e for p in payloads for e in p["results"]):
        raise ValueError("not a low-data result file: its rows have no fraction (bench.realdata writes them "
                         "with --fractions)")
    first = payloads[0]
    for other in payloads[1:]:
        for key in MERGE_KEYS:
            if other.get(key) != first.get(key):
                raise ValueError(f"cannot merge: {key} differs ({first.get(key)!r} vs {other.get(key)!r})")
    results: dict[str, dict] = {}
    for payload in payloads:
        for entry in payload["results"]:
            key = f"{entry['method']}|{entry['fraction']}"
            merged = results.setdefault(key, {k: v for k, v in entry.items()
                                              if k not in ("runs", "mean", "std", "ci95")} | {"runs": []})
            for k in ENTRY_KEYS:
                if merged.get(k) != entry.get(k):
                    raise ValueError(f"cannot merge: {k} of {entry['method']} at {entry['fraction']} differs")
            seen = {r["seed"] for r in merged["runs"]}
            for run in entry["runs"]:
                if run["seed"] in seen:
                    raise ValueError(f"cannot merge: seed {run['seed']} of {entry['method']} at {entry['fraction']} twice")
                merged["runs"].append(run)
    seeds = sorted({r["seed"] for e in results.values() for r in e["runs"]})
    fractions = sorted({e["fraction"] for e in results.values()})
    return {**{k: first.get(k) for k in MERGE_KEYS}, "seeds": seeds, "fractions": fractions,
            "merged_from": len(payloads), "results": results}


RUN_KEYS = ("seed", "edit_s", "train_or_load_s")  # a run's entries that are not metric columns


def report(payload: dict, results: dict, name: str) -> None:
    """Print the table and write the JSON (the runs with their mean/std/ci95) and the curve.

    The columns are the metrics the runs carry: this suite's, or ``bench.realdata --fractions``'
    (whose low-data files pool here too)."""
    from bench.plots import plot_lowdata

    first = next(iter(results.values()))["runs"][0]
    columns = [k for k in first if k not in RUN_KEYS]
    rows = [[e["method"], f"{100 * e['fraction']:g}%", e["n_train"]] + row
            for e, row in zip(results.values(), summarise(results, columns))]
    print_table(f"low-data meta-training, {payload['size']}, seeds {payload['seeds']}, "
                f"{payload['max_steps']} steps", ["method", "data", "train edits"] + columns, rows)
    write_with_plots(name, {**payload, "results": list(results.values())}, plot_lowdata)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from demo_world.build import DEMO_SIZES, editor_requests

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, choices=sorted(DEMO_SIZES), help="demo size (default: small; tiny with --quick)")
    parser.add_argument("--fractions", type=float, nargs="+", default=DEFAULT_FRACTIONS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=16, help="edits per edit() call at evaluation")
    parser.add_argument("--n-eval", type=int, default=128, help="held-out edits")
    parser.add_argument("--max-steps", type=int, default=300, help="meta-training steps, the same for every share")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--no-generation", action="store_true", help="skip greedy decoding (es_gen)")
    parser.add_argument("--quick", action="store_true", help="tiny demo, 100 meta-training steps, 48 edits")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="pool earlier runs' lowdata JSON files (other seeds); trains nothing")
    args = parser.parse_args(argv)
    if args.merge:
        import json

        try:
            merged = merge_results([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--merge: {exc}")
        results = merged.pop("results")
        report(merged, results, f"lowdata_{merged['size']}_merged")
        return
    if args.quick:
        args.max_steps, args.n_eval = 100, 48
    resolve_size(args)
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions must be in (0, 1]")

    paths, model, tok, world = demo_world_model(args.data_dir, args.size)
    spec = DEMO_SIZES[args.size]
    started = time.perf_counter()
    results: dict = {}
    for seed in args.seeds:
        train, val = editor_requests(world, spec, seed)
        evaluation = world.edit_requests("eval", seed=seed)[: args.n_eval]
        run_lowdata(model, tok, train, val, evaluation, args.fractions, args.methods, batch=args.batch_size,
                    max_steps=args.max_steps, seed=seed, modules=demo_modules(model, spec),
                    cache=results_dir() / "editors" / args.size, tag=f"{args.size}-{paths.root}",
                    generation=not args.no_generation, results=results)
    report({"size": args.size, "seeds": args.seeds, "max_steps": args.max_steps, "fractions": args.fractions,
            "n_eval": args.n_eval, "generation": not args.no_generation,
            "seconds": round(time.perf_counter() - started, 1)}, results, f"lowdata_{args.size}")


if __name__ == "__main__":
    main()
