"""The bench suites by name: the module that runs each and what it measures (no heavy imports)."""

from __future__ import annotations

import importlib

SUITES: dict[str, tuple[str, str]] = {
    "quality": ("bench.quality", "edit quality (ES/GS/LS) of every method on held-out demo-world edits, n in {1,16,128}"),
    "cost": ("bench.cost", "edit() vs its floor, L2 vs KL meta-training step, time and peak memory vs batch size and S"),
    "lowdata": ("bench.lowdata", "editors meta-trained on 5% / 25% / 100% of the edits: SMEdit S=2 vs MALMEN vs SMEdit S=1"),
    "sequential": ("bench.sequential", "T successive batches of n edits (e.g. 20x10), measured at the end on all TxN"),
    "lifelong": ("bench.lifelong", "the capacity curve: edits arriving one at a time through the service, scored on all live edits vs the base"),
    "realdata": ("bench.realdata", "CounterFact edits on a GPT-2 trained from scratch on CounterFact facts (or --base minilm, --model-dir)"),
    "gate_cost": ("bench.gate_cost", "one quality-gate measurement (canaries + live re-checks) vs one forward pass over its rows"),
    "scale": ("bench.scale", "edit() and a meta-training step at real widths (Llama-3-8B, GPT-J-6B; random weights, 2 blocks), extrapolated to full depth"),
    "serving": ("bench.serving", "embedded service overhead, micro-batching, edited inference"),
    "service": ("bench.service", "production mode (Redis + PostgreSQL): latency through the service, replica catch-up"),
}


def run_suite(name: str, argv: list[str], prog: str | None = None) -> None:
    """Run suite ``name`` with command-line arguments ``argv`` (as ``python -m bench.<name>`` would)."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; one of {', '.join(SUITES)}")
    importlib.import_module(SUITES[name][0]).main(list(argv), prog=prog)


def describe() -> str:
    width = max(map(len, SUITES))
    lines = ["bench suites (python -m bench.<suite> --help, or smedit bench <suite> --help):", ""]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in SUITES.items()]
    lines += ["", "Every suite takes --quick (under 10 minutes on 2 CPU cores) and writes JSON + PNG into "
              "bench/results/ (SMEDIT_BENCH_RESULTS)."]
    return "\n".join(lines)
