"""Cost suite: edit() time vs its floor, meta-training step time L2 vs KL, batch-size scaling.

    python -m bench.cost [--size tiny|small] [--quick] [--batch-sizes 1 4 16 64 256 1024]

1. ``edit()`` time vs the floor S × (forward + backward of the edit batch): the floor is what any
   S-step gradient-based editor must pay; the ratio is the editor's own overhead (hypernetwork,
   solve, apply/revert). Goal ≤ 1.5×.
2. Meta-training time per step, SMEdit's L2 regulariser vs MALMEN's KL, at S=1 and S=2: L2 needs
   no extra forward passes on unrelated prompts. Goal L2/KL ≤ 0.7 at S=1.
3. Edit latency, throughput and peak memory vs batch size.

Peak memory is what one ``edit()`` adds: on a GPU the allocator's peak above the memory in use
before the call, on the CPU the bytes malloc has handed out (glibc ``mallinfo2``; the RSS elsewhere)
sampled every millisecond, peak minus the value before the call (``peak_delta_mb``);
``peak_mb`` is the process's peak RSS so far (monotonic). Plots: ``cost_<size>_batch.png`` (time
and memory vs batch size) and ``cost_<size>_steps.png`` (time and memory vs S).
"""

from __future__ import annotations

import argparse
import random
import resource
from pathlib import Path

import torch

from bench.common import (demo_world_model, median, peak_memory_during, print_table, resolve_size, timed,
                          write_with_plots)
from editor_core.arch import get_module
from editor_core.editor import EditorConfig, SMEditor
from editor_core.tokens import pair_batch, target_nll
from editor_core.train import TrainConfig, train_step


def floor_seconds(editor: SMEditor, requests, repeats: int) -> float:
    """One forward + backward of the edit loss on the edit batch, gradients to the edited weights."""
    model = editor.model
    batch = pair_batch(editor.tokenizer, [r.prompt for r in requests], [r.target for r in requests]).to(editor.device)
    weights = [get_module(model, n).weight for n in editor.module_names]

    def once() -> None:
        for w in weights:
            w.requires_grad_(True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        target_nll(logits, batch).sum().backward()
        for w in weights:
            w.grad = None
            w.requires_grad_(False)

    return median(timed(once, repeats))


def bench_edit_vs_floor(model, tok, requests, steps: int, repeats: int) -> dict:
    editor = SMEditor(model, tok, EditorConfig(n_steps=steps))
    edit = median(timed(lambda: editor.edit(requests), repeats))
    _, peak = peak_memory_during(lambda: editor.edit(requests))
    floor = floor_seconds(editor, requests, repeats)
    return {"n_steps": steps, "batch": len(requests), "edit_s": edit, "floor_s": steps * floor,
            "ratio": edit / (steps * floor), "peak_delta_mb": peak / 2**20}


def bench_train_step(model, tok, requests, steps: int, reg: str, repeats: int) -> float:
    cfg = TrainConfig(n_steps=steps, reg=reg, reg_coef=1e-3 if reg == "l2" else 1.0, init_lr=1.0,
                      batch_size=len(requests))
    editor = SMEditor(model, tok, cfg.editor_config())
    opt = torch.optim.Adam(editor.parameters(), lr=1e-4)
    return median(timed(lambda: train_step(editor, requests, cfg, opt), repeats))


def bench_batch_sizes(model, tok, pool, sizes: list[int], repeats: int) -> list[dict]:
    editor = SMEditor(model, tok, EditorConfig(n_steps=2))
    rows = []
    for n in sizes:
        requests = [pool[i % len(pool)] for i in range(n)]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        seconds = median(timed(lambda: editor.edit(requests), repeats))
        _, added = peak_memory_during(lambda: editor.edit(requests))
        # CPU: the process's peak resident set (monotonic; sizes run in increasing order).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated()
        rows.append({"batch": n, "edit_s": seconds, "facts_per_s": n / seconds, "peak_mb": peak / 2**20,
                     "peak_delta_mb": added / 2**20})
    return rows


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, choices=["tiny", "small"], help="demo size (default: small; tiny with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny demo, fewer repeats and batch sizes")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default 1 4 16 64 256 1024 (--quick: up to 256)")
    args = parser.parse_args(argv)
    resolve_size(args)
    repeats = 3 if args.quick else 7
    _, model, tok, world = demo_world_model(args.data_dir, args.size)
    pool = world.edit_requests("eval", seed=0) + world.edit_requests("train", seed=0)
    random.Random(0).shuffle(pool)
    batch = pool[:16]

    floor_rows = [bench_edit_vs_floor(model, tok, batch, s, repeats) for s in (1, 2, 3)]
    print_table("edit() vs floor S×(forward+backward), batch 16", ["S", "edit s", "floor s", "ratio", "peak +MB"],
                [[r["n_steps"], r["edit_s"], r["floor_s"], r["ratio"], r["peak_delta_mb"]] for r in floor_rows])

    train_rows = []
    for steps in (1, 2):
        l2 = bench_train_step(model, tok, batch, steps, "l2", repeats)
        kl = bench_train_step(model, tok, batch, steps, "kl", repeats)
        train_rows.append({"n_steps": steps, "l2_s": l2, "kl_s": kl, "ratio": l2 / kl})
    print_table("meta-training step, batch 16: L2 vs KL", ["S", "L2 s", "KL s", "L2/KL"],
                [[r["n_steps"], r["l2_s"], r["kl_s"], r["ratio"]] for r in train_rows])

    sizes = sorted(args.batch_sizes or ([1, 4, 16, 64, 256] if args.quick else [1, 4, 16, 64, 256, 1024]))
    size_rows = bench_batch_sizes(model, tok, pool, sizes, max(1, repeats // 2))
    print_table("edit latency vs batch size (S=2)",
                ["batch", "edit s", "facts/s", "peak +MB (edit)", "peak MB (process RSS / CUDA)"],
                [[r["batch"], r["edit_s"], r["facts_per_s"], r["peak_delta_mb"], r["peak_mb"]] for r in size_rows])
    from bench.plots import plot_cost

    # cost.json is what earlier runs wrote; the size is in the name now, so tiny and small coexist.
    from bench.common import _cpu_memory_meter

    meter = "cuda_allocator" if torch.cuda.is_available() else _cpu_memory_meter()[0]
    write_with_plots(f"cost_{args.size}", {"model": args.size, "size": args.size, "quick": args.quick,
                                           "peak_delta_meter": meter,
                                           "edit_vs_floor": floor_rows, "train_step": train_rows,
                                           "batch_sizes": size_rows}, plot_cost)


if __name__ == "__main__":
    main()
