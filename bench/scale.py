"""Scale suite: what edit() and meta-training cost at real model widths, extrapolated to full depth.

    python -m bench.scale [--quick] [--families llama3-8b gptj-6b] [--layers 2]
                          [--facts 1 16 256 1024 4096] [--dtype auto|fp32|bf16] [--json OUT]

No real 7B weights exist here, so each family is built from its config at its real widths
(Llama-3-8B: 4096 / 14,336, vocabulary 128,256; GPT-J-6B: 4096 / 16,384, vocabulary 50,400) with
``--layers`` blocks and random weights; cost does not depend on what the weights know. The editor
edits what it edits by default (``arch.paper_modules``: Llama gate/up projections, GPT-J the MLP
output), with its key moments fitted (the d_in x d_in ridge a trained editor carries).

For every number of facts n, four edits are timed with their peak memory beyond the model
(``common.peak_memory_during``; each editor has edited once before, so the one-time inverse of
its key moments is not in them): all default modules (the measured row); one module in the first
block; one in the last block; both of these. From them, to first order, an edited module's own
cost (captures, moment, working copy, solve: both minus first) and a block's cost in the backward
graph (which starts at the first edited block: first minus last), and so the full-depth figure:
the last-block edit, plus the full model's further edited modules, plus its further blocks from
the first edited one up. One meta-training step at 16
edits is measured the same way (all modules). The editor checkpoint's size is exact at full depth
(the editor built on the full model's shapes on the ``meta`` device, nothing allocated).

JSON rows: ``family``, ``n``, ``edit_s``/``peak_mb`` (measured, all modules), ``module_s``/
``module_mb`` and ``block_s``/``block_mb`` (the first-order shares), ``full_edit_s``/
``full_peak_mb`` (extrapolated), and per family the checkpoint bytes and the model's bytes.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import peak_memory_during, print_table, write_with_plots

MB = 2**20


@dataclass(frozen=True)
class Family:
    """A model family at its real widths; ``full_layers`` is the depth of the released model."""

    name: str
    model_type: str
    widths: dict
    full_layers: int

    def config(self, n_layers: int):
        from transformers import GPTJConfig, LlamaConfig

        if self.model_type == "llama":
            return LlamaConfig(num_hidden_layers=n_layers, max_position_embeddings=256, **self.widths)
        return GPTJConfig(n_layer=n_layers, n_positions=256, **self.widths)


FAMILIES = {
    "llama3-8b": Family("llama3-8b", "llama", dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                                   num_key_value_heads=8, vocab_size=128256), 32),
    "gptj-6b": Family("gptj-6b", "gptj", dict(n_embd=4096, n_inner=16384, n_head=16, rotary_dim=64,
                                              vocab_size=50400), 28),
    # the suite's own test: the same code path in seconds
    "tiny": Family("tiny", "llama", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=1000), 4),
}

WORDS = ["amber", "basalt", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]


def fact_requests(n: int, offset: int = 0):
    """``n`` synthetic facts with one paraphrase each (what they say does not change the cost)."""
    from editor_core.types import EditRequest

    out = []
    for i in range(offset, offset + n):
        word = WORDS[i % len(WORDS)]
        out.append(EditRequest(prompt=f"Record {i}: the code word of item {i} is", target=f" {word} {i % 97}",
                               paraphrases=(f"Item {i} has the code word",)))
    return out


def make_tokenizer(out_dir: Path):
    """A small byte-level BPE over the synthetic facts: its ids are valid in any vocabulary."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    texts = [r.prompt + r.target for r in fact_requests(500)] + [r.paraphrases[0] for r in fact_requests(500)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out_dir))
    tok = GPT2TokenizerFast(vocab_file=str(out_dir / "vocab.json"), merges_file=str(out_dir / "merges.txt"))
    tok.pad_token = tok.eos_token
    return tok


def build(family: Family, n_layers: int, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1.5B-parameter CPU init costs minutes
        model = AutoModelForCausalLM.from_config(family.config(n_layers), dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def full_depth_shapes(family: Family) -> tuple[int, int, list[str]]:
    """(parameters, editor checkpoint bytes, edited modules) of the released depth, on ``meta``."""
    from editor_core.arch import paper_modules
    from editor_core.checkpoint import checkpoint_bytes
    from editor_core.editor import EditorConfig, SMEditor
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(family.config(family.full_layers))
        editor = SMEditor(model, None, EditorConfig())
    n_params = sum(p.numel() for p in model.parameters())
    ckpt = checkpoint_bytes(editor.state_dict())
    return n_params, ckpt, paper_modules(model)


def _block(name: str) -> int:
    return int(name.split(".h.")[-1].split(".")[0]) if ".h." in name else int(name.split("layers.")[1].split(".")[0])


def measure(fn) -> tuple[float, float]:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    _, peak = peak_memory_during(fn)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, peak / MB


def run_family(family: Family, n_layers: int, facts: list[int], device: str, dtype: torch.dtype, tok,
               train_step_edits: int, offload: bool = False) -> dict:
    from editor_core.arch import paper_modules
    from editor_core.editor import EditorConfig, SMEditor
    from editor_core.train import train_step
    from editor_core.train_config import TrainConfig

    model = build(family, n_layers, device, dtype)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    modules = paper_modules(model)
    first = [m for m in modules if _block(m) == min(map(_block, modules))][0]
    template = first.replace(f".{_block(first)}.", ".{}.")
    low, high = template.format(0), template.format(n_layers - 1)
    editors = {}
    for key, names in (("all", modules), ("first", [low]), ("last", [high]), ("both", [low, high])):
        editor = SMEditor(model, tok, EditorConfig(modules=names, n_steps=2))
        editor.capture_device = "cpu" if offload else None
        editor.fit_key_moments(fact_requests(64, offset=10_000))  # a trained editor's d_in x d_in moments
        editor.edit(fact_requests(1, offset=30_000))  # once per process: the moments' inverses, kernel warm-up
        editors[key] = editor
    full_params, full_ckpt, full_modules = full_depth_shapes(family)
    full_blocks = family.full_layers - min(map(_block, full_modules))  # blocks in the backward graph
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_bytes = (editors["all"].save(tmp) / "editor.safetensors").stat().st_size

    rows = []
    for n in facts:
        requests = fact_requests(n)
        got = {key: measure(lambda e=editor: e.edit(requests)) for key, editor in editors.items()}
        (t_all, m_all), (t_first, m_first), (t_last, m_last) = got["all"], got["first"], got["last"]
        (t_both, m_both) = got["both"]
        # one more module at the same backward depth; shares below zero are measurement noise
        per_module = [max(0.0, x - y) for x, y in ((t_both, t_first), (m_both, m_first))]
        per_block = [max(0.0, x - y) / max(1, n_layers - 1) for x, y in ((t_first, t_last), (m_first, m_last))]
        full = [base + (len(full_modules) - 1) * module + (full_blocks - 1) * block
                for base, module, block in zip((t_last, m_last), per_module, per_block)]
        rows.append({"family": family.name, "n": n, "edit_s": round(t_all, 3), "peak_mb": round(m_all, 1),
                     "module_s": round(per_module[0], 4), "module_mb": round(per_module[1], 1),
                     "block_s": round(per_block[0], 4), "block_mb": round(per_block[1], 1),
                     "full_edit_s": round(full[0], 2), "full_peak_mb": round(full[1], 1)})
        print(f"{family.name}: n={n} edit {t_all:.2f} s, +{m_all:.0f} MB; full depth ~{full[0]:.1f} s, +{full[1]:.0f} MB",
              flush=True)
    editor = editors["all"]
    optimizer = torch.optim.Adam(editor.parameters(), lr=1e-4)
    batch = fact_requests(train_step_edits, offset=20_000)
    train_s, train_mb = measure(lambda e=editor: train_step(e, batch, TrainConfig(reg="l2"), optimizer))
    del editors, editor, model
    gc.collect()
    return {
        "family": family.name, "layers": n_layers, "modules": modules, "dtype": str(dtype).replace("torch.", ""),
        "model_mb": round(model_bytes / MB, 1), "checkpoint_mb": round(ckpt_bytes / MB, 1),
        "full_layers": family.full_layers, "full_modules": full_modules,
        "full_model_bf16_mb": round(full_params * 2 / MB, 1),
        "full_checkpoint_mb": round(full_ckpt / MB, 1),
        "full_checkpoint_share": round(full_ckpt / (full_params * 2), 4),  # of the bf16 model's bytes
        "train_step": {"edits": train_step_edits, "seconds": round(train_s, 2), "peak_mb": round(train_mb, 1)},
        "rows": rows,
    }


def plot_scale(payload: dict, prefix: Path) -> list[Path]:
    from bench.plots import _pyplot, _save

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for fam in payload["families"]:
        xs = [r["n"] for r in fam["rows"]]
        a.plot(xs, [r["full_edit_s"] for r in fam["rows"]], marker="o", label=f"{fam['family']} (full depth)")
        b.plot(xs, [r["full_peak_mb"] / 1024 for r in fam["rows"]], marker="o", label=fam["family"])
    a.set(xscale="log", yscale="log", xlabel="facts per edit()", ylabel="seconds", title="edit time, extrapolated")
    b.set(xscale="log", xlabel="facts per edit()", ylabel="GB beyond the model", title="peak memory, extrapolated")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return [_save(fig, prefix.with_name(f"{prefix.name}.png"))]


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=None, choices=sorted(FAMILIES))
    parser.add_argument("--layers", type=int, default=2, help="blocks built (2-4; >= 2 for the block share)")
    parser.add_argument("--facts", type=int, nargs="+", default=None, help="facts per edit() (default 1 16 256 1024 4096)")
    parser.add_argument("--train-edits", type=int, default=16, help="edits in the measured meta-training step")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--offload-captures", action="store_true", help="edits keep their captures on the CPU")
    parser.add_argument("--quick", action="store_true", help="Llama-3-8B widths only, 1 and 16 facts (a few minutes on CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.layers < 2:
        parser.error("--layers must be at least 2 (the block share needs a first and a last block)")
    if args.quick:
        args.families = args.families or ["llama3-8b"]
        args.facts = args.facts or [1, 16]
    args.families = args.families or ["llama3-8b", "gptj-6b"]
    args.facts = args.facts or [1, 16, 256, 1024, 4096]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype) or (
        torch.bfloat16 if device == "cuda" else torch.float32)

    started = time.perf_counter()
    families: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(Path(tmp))
        for name in args.families:  # a run cut short by a time limit keeps the families done
            families.append(run_family(FAMILIES[name], args.layers, args.facts, device, dtype, tok, args.train_edits,
                                       args.offload_captures))
            _write(args, device, dtype, started, families, plot=False)
    rows = [[f["family"], r["n"], r["edit_s"], r["peak_mb"], r["full_edit_s"], r["full_peak_mb"]]
            for f in families for r in f["rows"]]
    print_table(f"edit() at real widths, {args.layers} blocks built, {device} {str(dtype).replace('torch.', '')}",
                ["family", "facts", "edit s", "+MB", "full-depth s (est.)", "full-depth +MB (est.)"], rows)
    print_table("editor checkpoint and one meta-training step",
                ["family", "edited (full depth)", "checkpoint MB (full)", "share of bf16 model", "train step s", "train +MB"],
                [[f["family"], len(f["full_modules"]), f["full_checkpoint_mb"], f"{100 * f['full_checkpoint_share']:.1f} %",
                  f["train_step"]["seconds"], f["train_step"]["peak_mb"]] for f in families])
    _write(args, device, dtype, started, families, plot=True)


def _write(args, device: str, dtype: torch.dtype, started: float, families: list[dict], plot: bool) -> None:
    from bench.common import write_result

    payload = {"device": device, "dtype": str(dtype).replace("torch.", ""), "layers": args.layers,
               "offload_captures": args.offload_captures,
               "seconds": round(time.perf_counter() - started, 1), "families": families}
    path = write_with_plots("scale", payload, plot_scale)[0] if plot else write_result("scale", payload)
    if args.json is not None and args.json.resolve() != path.resolve():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(path.read_text())
        if plot:
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
