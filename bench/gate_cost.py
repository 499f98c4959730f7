"""What the quality gate costs: one gate measurement against one forward pass over its rows.

    python -m bench.gate_cost [--size small|tiny] [--live 32] [--canaries 128] [--repeats 30]

On the demo model with ``--live`` edits applied one by one (the demo editor, test-split facts),
one more edit is measured the way the service's gate does it (``ModelRuntime.measure``: the
candidate's prompt and paraphrases, the re-checked live edits' rows and the canaries against
their base-model answers, teacher-forced, plus the candidate state's rebuild from the fp32
masters) and, on the same rows, by one bare forward pass of the model (the padded batch only:
no tokenising, no comparison, no state switch). Reported: medians and quartiles over
``--repeats`` after a warm-up, the ratio (goal: <= 1.2), and the same for the gate as it was
before it re-checked live edits (16 canaries, no live rows). Writes ``bench/results/gate_cost.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from bench.common import demo_world_model, environment, print_table, resolve_size, timed, write_result


def _rows(tokenizer, requests, canaries, reference) -> list[list[int]]:
    """The token rows the gate scores (as :func:`editor_core.scores.gate_scores` builds them)."""
    from editor_core.tokens import leading_ids, prompt_ids, split_pair

    lead = leading_ids(tokenizer)
    rows = []
    for r in requests:
        for prompt in (r.prompt, *r.paraphrases):
            p, t = split_pair(tokenizer, prompt, r.target)
            rows.append(lead + p + t)
    for prompt, answer in zip(canaries, reference):
        rows.append(prompt_ids(tokenizer, prompt) + list(answer))
    return rows


def _forward(model, rows: list[list[int]], pad: int, batch_size: int = 64):
    """One padded forward per ``batch_size`` rows, as the gate batches them."""
    device = next(model.parameters()).device
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, row in enumerate(chunk):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        batches.append((ids.to(device), mask.to(device)))

    def run() -> None:
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)

    return run


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, help="demo size (default small; tiny with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--live", type=int, default=32, help="live edits re-checked (the service's default)")
    parser.add_argument("--canaries", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    resolve_size(args)
    from app.runtime import make_request
    from app.services import ResolvedModel, load_runtime
    from app.settings import Settings

    paths, _, _, world = demo_world_model(args.data_dir, args.size, train_editor=True)
    runtime = load_runtime(Settings(_env_file=None, device="cpu"), ResolvedModel(paths.model_dir, paths.editor_dir))
    canaries = [line for line in paths.canary_file.read_text().splitlines() if line.strip()][: args.canaries]
    facts = world.edit_requests("eval", seed=0)[: args.live + 1]
    requests = [make_request(r.prompt, r.target, r.paraphrases) for r in facts]
    live, candidate = requests[:-1], requests[-1]
    with runtime.exclusive():
        deltas = []
        for r in live:
            deltas.append(runtime.compute([r]))
            runtime.state.set_active(list(deltas))
        delta = runtime.compute([candidate])
        reference = runtime.base_answers(canaries, Settings(_env_file=None).canary_tokens)
        pad = runtime.tokenizer.pad_token_id if runtime.tokenizer.pad_token_id is not None else runtime.tokenizer.eos_token_id
        results = {}
        for name, n_canaries, recheck in (("gate (live re-check)", len(canaries), live), ("gate before (16 canaries)", 16, [])):
            cans, ref = canaries[:n_canaries], reference[:n_canaries]
            state = deltas + [delta]

            def gate() -> None:
                runtime.measure([candidate], state, None, cans, ref, recheck=recheck)

            runtime.state.set_active(state)
            rows = _rows(runtime.tokenizer, [candidate, *recheck], cans, ref)
            forward = _forward(runtime.model, rows, pad)
            gate_s = timed(gate, args.repeats, warmup=3)
            forward_s = timed(forward, args.repeats, warmup=3)
            g, f = _quartiles(gate_s), _quartiles(forward_s)
            results[name] = {"rows": len(rows), "canaries": n_canaries, "live_rechecked": len(recheck),
                             "gate_s": g, "forward_s": f, "ratio": g[1] / f[1]}
        runtime.state.set_active(deltas)
    print_table(f"gate cost on the demo '{args.size}' model ({args.live} live edits, CPU)",
                ["measurement", "rows", "gate p50 s (q1-q3)", "forward p50 s (q1-q3)", "gate / forward"],
                [[name, r["rows"], f"{r['gate_s'][1]:.4f} ({r['gate_s'][0]:.4f}-{r['gate_s'][2]:.4f})",
                  f"{r['forward_s'][1]:.4f} ({r['forward_s'][0]:.4f}-{r['forward_s'][2]:.4f})", f"{r['ratio']:.2f}"]
                 for name, r in results.items()])
    path = write_result("gate_cost", {"size": args.size, "live": args.live, "repeats": args.repeats,
                                      "results": results, "environment": environment()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
