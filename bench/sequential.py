"""Sequential editing suite on the demo world: T successive batches of n edits, never reverted.

    python -m bench.sequential [--size tiny|small] [--settings 1x10 5x10 20x10] [--seeds 0] [--quick]

For a setting ``TxN`` the first T×n held-out edits are applied as T batches of n, one after the
other on the same model (each edit is computed on the model as the previous batches left it),
and ES / GS / LS are measured at the end on all T×n of them (``evaluate_editing(...,
batch_size=n, sequential=T)``); the model is restored afterwards. ``1xN`` is the one-batch
baseline, so the curve shows what accumulating edits costs. Editors are the quality suite's
(same settings, same cache: ``bench/results/editors/<size>/``).

Columns as in ``bench.quality`` plus ``gs`` / ``ls`` (all paraphrases / all locality probes).
Writes ``sequential_<size>.json`` and ``sequential_<size>_curve.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import demo_world_model, print_table, resolve_size, results_dir, write_with_plots
from bench.quality import demo_modules, make_method, summarise

COLUMNS = ["es", "es_first", "es_gen", "gs", "gs_anchor", "gs_unseen", "ls", "ls_other", "ls_same"]
DEFAULT_METHODS = ["no-edit", "FT-L eps=0.03", "MALMEN S=1 KL", "SMEdit S=2 L2"]
DEFAULT_SETTINGS = ["1x10", "5x10", "20x10"]
QUICK_SETTINGS = ["1x8", "3x8", "6x8"]  # the tiny world has 48 held-out edits


def parse_setting(text: str) -> tuple[int, int]:
    """``"20x10"`` -> (T=20, n=10)."""
    try:
        t, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TxN such as 20x10, got {text!r}") from None
    if t < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"T and n must be >= 1 in {text!r}")
    return t, n


def run_sequential(model, tok, train, val, evaluation, settings: list[tuple[int, int]], methods: list[str], *,
                   max_steps: int, seed: int, modules, cache: Path, tag: str, generation: bool = True,
                   progress: bool = True, results: dict | None = None, preserve=None) -> dict:
    """Evaluate every method at every (T, n) on ``evaluation``; adds one run per entry to ``results``."""
    from bench.quality import wants_live
    from editor_core.evaluate import evaluate_editing

    results = {} if results is None else results
    for name in methods:
        edit_fn = make_method(name, model, tok, train, val, max_steps=max_steps, seed=seed, modules=modules,
                              cache=cache, tag=tag, progress=progress, preserve=preserve)
        for t, n in settings:
            t_eff = min(t, len(evaluation) // n)
            if t_eff < 1:
                raise ValueError(f"a batch of n={n} needs {n} held-out edits; there are {len(evaluation)}")
            if t_eff < t:
                print(f"note: {t}x{n} needs {t * n} held-out edits, there are {len(evaluation)}: running {t_eff}x{n}")
            started = time.perf_counter()
            report = evaluate_editing(model, tok, edit_fn, evaluation[: t_eff * n], batch_size=n, sequential=t_eff,
                                      generation=generation, progress=progress, pass_live=wants_live(edit_fn))
            entry = results.setdefault(f"{name}|{t}x{n}", {"method": name, "T": t_eff, "n": n, "edits": t_eff * n,
                                                           "T_requested": t})
            entry.setdefault("runs", []).append(
                {"seed": seed, **{k: report["summary"].get(k) for k in COLUMNS},
                 "edit_s": report["timing"]["edit_seconds_mean"], "seconds": round(time.perf_counter() - started, 1)})
    return results


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from demo_world.build import DEMO_SIZES, editor_requests, preservation_requests

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, choices=sorted(DEMO_SIZES), help="demo size (default: small; tiny with --quick)")
    parser.add_argument("--settings", type=parse_setting, nargs="+", default=None,
                        help=f"TxN settings (default {' '.join(DEFAULT_SETTINGS)}; --quick: {' '.join(QUICK_SETTINGS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=300, help="meta-training steps (the quality suite's default)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help="no-edit, FT-L eps=B, untrained S=2, MALMEN S=1 KL, SMEdit S=1/2/3 L2")
    parser.add_argument("--no-generation", action="store_true", help="skip greedy decoding (es_gen)")
    parser.add_argument("--quick", action="store_true", help="tiny demo, settings 1x8 3x8 6x8, 150 meta-training steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps = 150
        args.settings = args.settings or [parse_setting(s) for s in QUICK_SETTINGS]
    args.settings = args.settings or [parse_setting(s) for s in DEFAULT_SETTINGS]
    resolve_size(args)

    paths, model, tok, world = demo_world_model(args.data_dir, args.size)
    spec = DEMO_SIZES[args.size]
    started = time.perf_counter()
    results: dict = {}
    for seed in args.seeds:
        train, val = editor_requests(world, spec, seed)
        evaluation = world.edit_requests("eval", seed=seed)
        run_sequential(model, tok, train, val, evaluation, args.settings, args.methods, max_steps=args.max_steps,
                       seed=seed, modules=demo_modules(model, spec), cache=results_dir() / "editors" / args.size,
                       tag=f"{args.size}-{paths.root}", generation=not args.no_generation, results=results,
                       preserve=preservation_requests(world, seed))
    rows = [[e["method"], f"{e['T']}x{e['n']}", e["edits"]] + row
            for e, row in zip(results.values(), summarise(results, COLUMNS))]
    print_table(f"sequential editing, demo '{args.size}', seeds {args.seeds}", ["method", "TxN", "edits"] + COLUMNS, rows)
    from bench.plots import plot_sequential

    write_with_plots(f"sequential_{args.size}", {
        "size": args.size, "seeds": args.seeds, "max_steps": args.max_steps,
        "settings": [f"{t}x{n}" for t, n in args.settings], "seconds": round(time.perf_counter() - started, 1),
        "results": list(results.values()),
    }, plot_sequential)


if __name__ == "__main__":
    main()
