"""Train a small GPT-2-architecture LM from scratch on a text corpus (the demo world's facts),
or fine-tune an existing causal LM on one with the same loss (:func:`finetune_lm`).

The tokenizer is a byte-level BPE trained on the same corpus and saved as a
``GPT2TokenizerFast``, so ``AutoTokenizer.from_pretrained(dir, local_files_only=True)`` and
``AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)`` load the result like any
other Hugging Face model. Byte-level means any text (``"Zürich ☃"``) round-trips.

Training follows the convention of :mod:`editor_core.tokens`: a text is the tokenizer's leading
BOS if it adds one (none for the GPT-2 tokenizers trained here; ``[CLS]`` for a BERT decoder whose
tokenizer names it BOS), ``prompt + " " + answer``, then EOS; the answer's tokens are the ones after
the prompt's own tokenization. Memorisation is measured as exact match of all answer tokens under teacher
forcing (argmax), which is the same as greedy decoding producing the answer.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, PreTrainedTokenizerBase

from editor_core.tokens import leading_ids, prompt_ids, split_pair

EOS_TOKEN = "<|endoftext|>"

TextOrPair = str | tuple[str, str]


@dataclass
class PretrainConfig:
    """Model size and optimisation settings for :func:`pretrain_lm`."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = 3000
    min_frequency: int = 2
    dropout: float = 0.0
    max_steps: int = 20000
    max_epochs: float | None = None  # whichever of max_steps / max_epochs comes first
    max_seconds: float | None = None  # wall-clock safety net; stops (and still saves) when hit
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    batch_size: int = 64
    seed: int = 0
    target_accuracy: float = 1.0  # early stop when answer exact-match on eval_pairs reaches this
    eval_every: int = 200  # steps between accuracy checks
    eval_sample: int = 1024  # checks use a sample; the full set is scored before stopping
    prompt_loss_weight: float = 1.0  # weight of prompt tokens vs answer tokens (pairs only)
    num_threads: int | None = None  # torch CPU threads; None: the faster of 1 and the default

    @classmethod
    def preset(cls, size: str, **overrides) -> "PretrainConfig":
        """``tiny`` (tests, < 1 min on 2 cores) or ``small`` (the demo default)."""
        if size not in PRESETS:
            raise ValueError(f"unknown size {size!r}; use one of {sorted(PRESETS)}")
        return replace(PRESETS[size], **overrides)


# Measured on 2 CPU cores shared with other jobs: "tiny" (40 products) reaches 98% of seen facts in
# ~600 steps (27 s idle, ~80 s under load); "small" (300 products x 8 relations) reaches 99.9% in
# ~2750 steps (1.7M tokens, 17 epochs; 800 s at 2.2k tokens/s under load, 4-8k tokens/s idle).
# The cosine schedule ends at max_steps, so the learning rate is low when the last facts land.
PRESETS: dict[str, PretrainConfig] = {
    "tiny": PretrainConfig(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=1000,
                           max_steps=1500, lr=5e-3, batch_size=32, eval_every=100,
                           warmup_steps=50, prompt_loss_weight=0.1, target_accuracy=0.98,
                           max_seconds=900),
    "small": PretrainConfig(n_layer=4, n_embd=128, n_head=4, n_positions=64, vocab_size=3000,
                            max_steps=4000, lr=3e-3, batch_size=64, eval_every=250,
                            prompt_loss_weight=0.1, target_accuracy=0.999, max_seconds=3600),
    # Benchmark-only base (bench.lifelong --size wide): twice as wide, so the edited MLP outputs
    # read 1,024 inputs; a step costs ~1.25x a "small" one on 2 cores (the 3,000-token head
    # dominates both).
    "wide": PretrainConfig(n_layer=4, n_embd=256, n_head=4, n_positions=64, vocab_size=3000,
                           max_steps=7000, lr=2e-3, batch_size=64, eval_every=500,
                           prompt_loss_weight=0.1, target_accuracy=0.995, max_seconds=5400),
}


# --- tokenizer ------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> GPT2TokenizerFast:
    """A byte-level BPE trained on ``texts``, wrapped as ``GPT2TokenizerFast`` (EOS = BOS = pad)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN], show_progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = GPT2TokenizerFast(
            vocab_file=os.path.join(tmp, "vocab.json"),
            merges_file=os.path.join(tmp, "merges.txt"),
            unk_token=EOS_TOKEN, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
            add_prefix_space=False, clean_up_tokenization_spaces=False,
        )
    tok.padding_side = "right"
    return tok


def encode_pair(tok: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Prompt ids (after the leading BOS, if the tokenizer adds one) and answer ids, the answer
    tokenized in context: exactly what :func:`editor_core.tokens.pair_batch` feeds the model."""
    prompt, answer_ids = split_pair(tok, prompt, answer)
    return leading_ids(tok) + prompt, answer_ids


# --- evaluation -----------------------------------------------------------------------------


@torch.no_grad()
def answer_hits(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 256,
) -> list[bool]:
    """Per pair: does the argmax reproduce every answer token under teacher forcing?"""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits: list[bool] = []
    for start in range(0, len(pairs), batch_size):
        rows = [encode_pair(tok, p, a) for p, a in pairs[start : start + batch_size]]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), tok.eos_token_id, dtype=torch.long)
        for b, (p, a) in enumerate(rows):
            ids[b, : len(p) + len(a)] = torch.tensor(p + a)
        mask = torch.zeros_like(ids)
        for b, (p, a) in enumerate(rows):
            mask[b, : len(p) + len(a)] = 1
        pred = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for b, (p, a) in enumerate(rows):
            got = pred[b, len(p) - 1 : len(p) + len(a) - 1].tolist()
            hits.append(got == a)
    model.train(was_training)
    return hits


def answer_accuracy(model: nn.Module, tok: PreTrainedTokenizerBase,
                    pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> float:
    """Share of pairs whose answer the model reproduces exactly (teacher-forced argmax)."""
    if not pairs:
        return float("nan")
    hits = answer_hits(model, tok, pairs, batch_size)
    return sum(hits) / len(hits)


# --- training -------------------------------------------------------------------------------


@dataclass
class _Example:
    ids: list[int]
    weights: list[float]  # loss weight of predicting ids[t] (from position t - 1); [0] unused


def _examples(tok: PreTrainedTokenizerBase, texts: Sequence[TextOrPair], prompt_weight: float) -> list[_Example]:
    eos = tok.eos_token_id
    out = []
    for item in texts:
        if isinstance(item, str):
            ids = prompt_ids(tok, item) + [eos]
            weights = [1.0] * len(ids)
        else:
            prompt, answer = item
            p, a = encode_pair(tok, prompt, answer)
            ids = p + a + [eos]
            weights = [prompt_weight] * len(p) + [1.0] * (len(a) + 1)
        out.append(_Example(ids, weights))
    return out


class _ThreadTuner:
    """Chooses torch's CPU thread count for training steps: the faster of 1 and the default.

    On a CPU shared with other busy processes, OpenMP threads spin-waiting for each other can
    make several threads many times slower than one (measured: 8x on 2 shared cores); on an idle
    machine more threads win. So every ``every`` steps a few steps are timed with each
    candidate, and the fastest per token is kept until the next check.
    """

    def __init__(self, fixed: int | None, probe_steps: int = 6, every: int = 100) -> None:
        if fixed:
            torch.set_num_threads(fixed)
        self.candidates = [fixed] if fixed else sorted({1, torch.get_num_threads()})
        self.current = self.candidates[-1]
        self.probe_steps, self.every = probe_steps, every
        self.queue: list[int] = []
        self.times: dict[int, list[float]] = {}
        self.steps_since = every - 3  # the first check starts after a few warm-up steps
        self.choices: list[int] = []

    def before_step(self) -> None:
        if len(self.candidates) > 1 and not self.queue and self.steps_since >= self.every:
            self.queue = [c for c in self.candidates for _ in range(self.probe_steps)]
            self.times = {c: [0.0, 0.0] for c in self.candidates}
            self.steps_since = 0
        threads = self.queue[0] if self.queue else self.current
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def after_step(self, seconds: float, tokens: int) -> None:
        if not self.queue:
            self.steps_since += 1
            return
        threads = self.queue.pop(0)
        self.times[threads][0] += seconds
        self.times[threads][1] += tokens
        if not self.queue:
            self.current = min(self.candidates, key=lambda c: self.times[c][0] / max(1.0, self.times[c][1]))
            self.choices.append(self.current)
            torch.set_num_threads(self.current)


def _lr_at(step: int, total: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_model(cfg: PretrainConfig, tok: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def pretrain_lm(
    texts: Sequence[TextOrPair],
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    eval_pairs: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """Train tokenizer + GPT-2 from scratch on ``texts`` and save both into ``out_dir``.

    ``texts`` are strings, or ``(prompt, answer)`` pairs (text = prompt + " " + answer), which let
    ``config.prompt_loss_weight`` weigh prompt tokens apart from answer tokens. EOS is appended.
    Training stops at ``max_steps``/``max_epochs``/``max_seconds``, or early once answer exact
    match on ``eval_pairs`` (default: the pairs in ``texts``) reaches ``target_accuracy``.

    Returns stats: steps, epochs, seconds, tokens, tokens_per_second, final_loss, accuracy
    (on ``eval_pairs``; ``None`` without any), n_params, stopped (why training ended).
    """
    cfg = config or PretrainConfig()

    def build() -> tuple[nn.Module, PreTrainedTokenizerBase]:
        plain = [t if isinstance(t, str) else f"{t[0]} {t[1].strip()}" for t in texts]
        tok = train_tokenizer(plain, cfg.vocab_size, cfg.min_frequency)
        tok.model_max_length = cfg.n_positions
        return build_model(cfg, tok), tok

    return _run(texts, Path(out_dir), cfg, progress, eval_pairs, "pretrain", build)


def finetune_lm(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[TextOrPair],
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    eval_pairs: Sequence[tuple[str, str]] | None = None,
) -> dict:
    """Train an existing causal LM and its tokenizer on ``texts`` as :func:`pretrain_lm` trains a
    new one (same batches, loss, schedule, stopping rules and stats), then save both into ``out_dir``.

    Only the optimisation fields of ``config`` apply (its model-size fields are ignored); every
    parameter of ``model`` is trained (it is switched to train mode and gradients are enabled), on
    the CPU or wherever ``model`` lives. ``tok`` needs an EOS token, which ends every text.
    """
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: set tok.eos_token (BERT-style: '[SEP]')")

    def build() -> tuple[nn.Module, PreTrainedTokenizerBase]:
        model.requires_grad_(True)
        return model, tok

    return _run(texts, Path(out_dir), config or PretrainConfig(), progress, eval_pairs, "finetune", build)


def _run(texts: Sequence[TextOrPair], out_dir: Path, cfg: PretrainConfig, progress: bool,
         eval_pairs: Sequence[tuple[str, str]] | None, desc: str,
         build: Callable[[], tuple[nn.Module, PreTrainedTokenizerBase]]) -> dict:
    """Seed, build (model, tokenizer) after seeding, train; the thread count is restored after."""
    if not texts:
        raise ValueError("no texts to train on")
    if eval_pairs is None:
        eval_pairs = [t for t in texts if not isinstance(t, str)]
    old_threads = torch.get_num_threads()
    try:
        start_time = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, tok = build()
        return _train(model, tok, texts, out_dir, cfg, progress, list(eval_pairs), start_time, desc)
    finally:
        torch.set_num_threads(old_threads)


def _max_positions(config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _train(model: nn.Module, tok: PreTrainedTokenizerBase, texts, out_dir: Path, cfg: PretrainConfig,
           progress: bool, eval_pairs, start_time: float, desc: str) -> dict:
    from tqdm.auto import tqdm

    examples = _examples(tok, texts, cfg.prompt_loss_weight)
    longest = max(len(e.ids) for e in examples)
    limit = _max_positions(model.config)
    if limit is not None and longest > limit:
        raise ValueError(f"a text has {longest} tokens; the model takes at most {limit}")

    model.train()
    device = next(model.parameters()).device
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps
    if cfg.max_epochs is not None:
        total = min(total, max(1, int(cfg.max_epochs * steps_per_epoch)))

    gen = torch.Generator().manual_seed(cfg.seed)
    eval_rng = torch.Generator().manual_seed(cfg.seed + 1)
    pad = tok.eos_token_id
    step, tokens, loss_ema, accuracy, stopped = 0, 0, None, None, "max_steps"
    eval_seconds = 0.0
    history: list[dict] = []
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    order: list[int] = []
    tuner = _ThreadTuner(cfg.num_threads)
    while step < total:
        tuner.before_step()
        step_start = time.perf_counter()
        if not order:
            order = torch.randperm(len(examples), generator=gen).tolist()
        batch = [examples[i] for i in order[: cfg.batch_size]]
        order = order[cfg.batch_size :]
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        weights = torch.zeros((len(batch), width))
        for b, e in enumerate(batch):
            ids[b, : len(e.ids)] = torch.tensor(e.ids)
            mask[b, : len(e.ids)] = 1
            weights[b, : len(e.weights)] = torch.tensor(e.weights)
        weights[:, 0] = 0.0  # the first token has no prediction
        ids, mask, weights = ids.to(device), mask.to(device), weights.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        nll = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        w = weights[:, 1:].reshape(-1)
        loss = (nll * w).sum() / w.sum()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        step_tokens = int(mask.sum())
        tokens += step_tokens
        tuner.after_step(time.perf_counter() - step_start, step_tokens)
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        bar.update(1)

        elapsed = time.perf_counter() - start_time
        if eval_pairs and (step % cfg.eval_every == 0 or step == total):
            eval_start = time.perf_counter()
            if len(eval_pairs) > cfg.eval_sample:
                pick = torch.randperm(len(eval_pairs), generator=eval_rng)[: cfg.eval_sample].tolist()
                sample_acc = answer_accuracy(model, tok, [eval_pairs[i] for i in pick])
            else:
                sample_acc = answer_accuracy(model, tok, eval_pairs)
            model.train()
            bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{sample_acc:.3f}")
            history.append({"step": step, "seconds": round(elapsed, 1), "loss": round(loss_ema, 4),
                            "sample_accuracy": round(sample_acc, 4), "threads": tuner.current})
            if sample_acc >= cfg.target_accuracy:
                accuracy = answer_accuracy(model, tok, eval_pairs)
                model.train()
            eval_seconds += time.perf_counter() - eval_start
            if accuracy is not None and accuracy >= cfg.target_accuracy:
                stopped = "target_accuracy"
                break
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
        if cfg.max_seconds is not None and elapsed > cfg.max_seconds:
            stopped = "max_seconds"
            break
    bar.close()
    train_seconds = time.perf_counter() - start_time

    model.eval()
    if stopped != "target_accuracy" and eval_pairs:
        accuracy = answer_accuracy(model, tok, eval_pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    stats = {
        "steps": step,
        "epochs": round(step / steps_per_epoch, 2),
        "seconds": round(train_seconds, 1),
        "tokens": tokens,
        "eval_seconds": round(eval_seconds, 1),
        "tokens_per_second": round(tokens / max(train_seconds - eval_seconds, 1e-9)),
        "final_loss": round(loss_ema, 4) if loss_ema is not None else None,
        "accuracy": accuracy,
        "n_params": n_params,
        "n_texts": len(examples),
        "vocab_size": len(tok),
        "stopped": stopped,
        "threads": tuner.current,
        "thread_choices": tuner.choices,
        "history": history,
        "config": asdict(cfg),
    }
    (out_dir / "pretrain_stats.json").write_text(json.dumps(stats, indent=1))
    return stats
