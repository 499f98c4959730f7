"""Meta-training the editor's hypernetworks on example edits.

One training step, for a batch of edit requests:

1. run the S edit steps as at inference (captures feed the normalisers), leaving the model edited;
2. on the edited model, compute the generalisation loss (target NLL on each request's paraphrases
   and its prompt) plus either the SMEdit regulariser ``reg_coef * sum ||dW||²`` over the total
   shift, or MALMEN's ``reg_coef * KL(base || edited)`` on unrelated prompts; backpropagate it to
   the edited weights only, giving ``dL/dW`` per module;
3. revert the model, then carry ``dL/dW`` back through each step's least-squares solve (a small
   autograd graph over ``dV`` and the ridge) and through the hypernetwork, token chunk by chunk.

Step 3 is MALMEN's decoupling: the LM's backward never holds the hypernetwork graph. Captures are
constants (step 2's dependence on step 1's shift is not differentiated): first-order, one
forward/backward of the edit batch per step."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editor_core.arch import get_module, is_in_out
from editor_core.capture import capture_keys
from editor_core.delta import Delta
from editor_core.key_moment import request_keys
from editor_core.editor import SMEditor, StepRecord
from editor_core.solve import shift_dense
from editor_core.tokens import PairBatch, pair_batch, target_nll
from editor_core.train_config import L2_METRICS, REGULARISERS, TrainConfig
from editor_core.types import EditRequest

__all__ = ["L2_METRICS", "REGULARISERS", "TrainConfig", "meta_train", "train_step"]


# ---- losses on the edited model ------------------------------------------------------------
def _generalisation_batch(tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], cfg: TrainConfig) -> PairBatch:
    prompts, targets = [], []
    for r in requests:
        texts = list(r.paraphrases) + ([r.prompt] if cfg.include_prompt or not r.paraphrases else [])
        prompts += texts
        targets += [r.target] * len(texts)
    return pair_batch(tokenizer, prompts, targets, cfg.max_length)


def _locality_batch(tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], cfg: TrainConfig) -> PairBatch:
    probes = [p for r in requests for p in r.locality if p.answer]
    if not probes:
        raise ValueError("KL training and l2_metric='locality' need locality probes with answers in the training requests")
    return pair_batch(tokenizer, [p.prompt for p in probes], [p.answer for p in probes], cfg.max_length)


def _masked_logprobs(model: nn.Module, batch: PairBatch) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[batch.predict_mask].float().log_softmax(-1)


def _weight_grads(editor: SMEditor) -> dict[str, torch.Tensor]:
    grads = {}
    for name in editor.module_names:
        module = get_module(editor.model, name)
        grad = module.weight.grad
        if grad is None:
            grad = torch.zeros_like(module.weight)
        grads[name] = (grad if is_in_out(module) else grad.t()).float()
    return grads


def edited_loss_grads(
    editor: SMEditor,
    requests: Sequence[EditRequest],
    cfg: TrainConfig,
    base_loc_logprobs: torch.Tensor | None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``dL/dW`` of the generalisation (+ KL) loss w.r.t. each edited weight, on the edited model."""
    model, device = editor.model, editor.device
    weights = [get_module(model, n).weight for n in editor.module_names]
    for w in weights:
        w.requires_grad_(True)
        w.grad = None
    try:
        with torch.enable_grad():
            gen = _generalisation_batch(editor.tokenizer, requests, cfg).to(device)
            logits = model(input_ids=gen.input_ids, attention_mask=gen.attention_mask).logits
            gen_loss = target_nll(logits, gen).mean()
            loss = gen_loss
            stats = {"gen_loss": float(gen_loss.detach())}
            if cfg.reg == "kl":
                assert base_loc_logprobs is not None
                loc = _locality_batch(editor.tokenizer, requests, cfg).to(device)
                edited = _masked_logprobs(model, loc)
                kl = (base_loc_logprobs.exp() * (base_loc_logprobs - edited)).sum(-1).mean()
                loss = loss + cfg.reg_coef * kl
                stats["kl"] = float(kl.detach())
            loss.backward()
        return _weight_grads(editor), stats
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None


def backprop_to_hypernets(
    editor: SMEditor, records: list[StepRecord], weight_grads: dict[str, torch.Tensor]
) -> None:
    """Carry ``dL/dW`` through each step's solve and hypernetwork into the editor's ``.grad``."""
    for step, record in enumerate(records):
        for name, cap in record.captures.items():
            net, idx = editor.net_for(step, name)
            value_diffs = record.value_diffs[name].detach().requires_grad_(True)
            with torch.enable_grad():
                dense = shift_dense(editor.solve(step, name, cap.keys, value_diffs, record.live.get(name)))
                (dense * weight_grads[name]).sum().backward()
            upstream = value_diffs.grad
            chunk = editor.config.token_chunk
            for start in range(0, cap.keys.shape[0], chunk):
                end = start + chunk
                with torch.enable_grad():
                    predicted = net.value_diffs(cap.keys[start:end], cap.grads[start:end], idx)
                    (predicted * upstream[start:end]).sum().backward()


def shift_penalty(
    editor: SMEditor, records: list[StepRecord], cfg: TrainConfig,
    locality_keys: dict[str, torch.Tensor] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """SMEdit's L2 term ``sum_m ||dW_m||²`` over the total shift of each module, and its gradient.

    ``l2_metric="key"`` measures the shift in the metric of the keys instead,
    ``tr(dWᵀ C̄ dW)`` with ``C̄`` the keys' second moment scaled to unit mean eigenvalue: the expected
    squared output change on typical prompts, which is what locality is about. ``frobenius`` is
    the paper's plain norm. ``locality`` uses the keys of the batch's locality prompts (other
    facts, taken on the unedited model): ``tr(dWᵀ M dW)`` with ``M = (1 - w) I + w C̄_loc``
    (``w = cfg.locality_weight``), the plain norm plus the expected squared output change on
    exactly the prompts an edit must not move (the identity part keeps directions those few
    prompts do not span from going free). It is a
    first-order stand-in for MALMEN's KL term: one forward pass of the base model, no second
    pass through the edited one and no backward.
    """
    value, grads = 0.0, {}
    for name in editor.module_names:
        parts = [r.delta.dense(name) for r in records if name in r.delta]
        if not parts:
            continue
        total = torch.stack(parts).sum(0)
        moment = editor.key_moment(name)
        if cfg.l2_metric == "locality" and locality_keys and name in locality_keys:
            keys = locality_keys[name].to(device=total.device, dtype=total.dtype)
            cov = keys.T @ keys / max(1, keys.shape[0])
            cov = cov / (torch.trace(cov) / cov.shape[0]).clamp_min(1e-12)
            w = cfg.locality_weight
            weighted = (1.0 - w) * total + w * (cov @ total)
            value += float((total * weighted).sum())
            grads[name] = 2.0 * weighted
        elif cfg.l2_metric == "key" and moment.mode == "full" and moment.count > 0:
            metric = (moment.moment / (torch.trace(moment.moment) / moment.moment.shape[0])).to(total.dtype)
            weighted = metric @ total
            value += float((total * weighted).sum())
            grads[name] = 2.0 * weighted
        else:
            value += float(total.pow(2).sum())
            grads[name] = 2.0 * total
    return value, grads


def _locality_keys(
    editor: SMEditor, requests: Sequence[EditRequest], cfg: TrainConfig
) -> dict[str, torch.Tensor] | None:
    """Keys of the requests' locality prompts on the unedited model, for ``l2_metric="locality"``."""
    if cfg.reg != "l2" or cfg.l2_metric != "locality":
        return None
    return capture_keys(editor.model, editor.module_names, _locality_batch(editor.tokenizer, requests, cfg))


def train_step(
    editor: SMEditor,
    requests: Sequence[EditRequest],
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    live: Sequence[Delta] = (),
) -> dict[str, float]:
    """One meta-training step on a batch of edit requests; returns loss statistics.

    ``live``: key-only deltas the step's solve protects, as the service's live edits would be."""
    model = editor.model
    base_loc = None
    if cfg.reg == "kl":
        with torch.no_grad():
            loc = _locality_batch(editor.tokenizer, requests, cfg).to(editor.device)
            base_loc = _masked_logprobs(model, loc)
    locality_keys = _locality_keys(editor, requests, cfg)
    with editor.working_copies():  # bf16/fp16 models: exact steps, dL/dW in fp32
        records = editor.run_steps(requests, update_stats=True, live=live)
        try:
            weight_grads, stats = edited_loss_grads(editor, requests, cfg, base_loc)
        finally:
            editor.revert_steps(records)
    if cfg.reg == "l2":
        sq_norm, grads = shift_penalty(editor, records, cfg, locality_keys)
        for name, grad in grads.items():
            weight_grads[name] = weight_grads[name] + cfg.reg_coef * grad
        stats["l2"] = sq_norm
    backprop_to_hypernets(editor, records, weight_grads)
    stats["grad_norm"] = float(nn.utils.clip_grad_norm_(editor.parameters(), cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stats


# ---- step-size calibration -----------------------------------------------------------------
CALIBRATION_GRID = tuple(10.0 ** (k / 2) for k in range(-10, 7))
CALIBRATION_BATCHES = 4  # batches of training edits the step size is scored on


@torch.no_grad()
def _objective(editor: SMEditor, requests: Sequence[EditRequest], cfg: TrainConfig) -> float:
    """The training loss of the editor as it is (no gradients), used to pick a starting step size."""
    model = editor.model
    base_loc = None
    if cfg.reg == "kl":
        loc = _locality_batch(editor.tokenizer, requests, cfg).to(editor.device)
        base_loc = _masked_logprobs(model, loc)
    locality_keys = _locality_keys(editor, requests, cfg)
    with editor.working_copies():
        records = editor.run_steps(requests)
        try:
            gen = _generalisation_batch(editor.tokenizer, requests, cfg).to(editor.device)
            logits = model(input_ids=gen.input_ids, attention_mask=gen.attention_mask).logits
            loss = float(target_nll(logits, gen).mean())
            if base_loc is not None:
                edited = _masked_logprobs(model, loc)
                loss += cfg.reg_coef * float((base_loc.exp() * (base_loc - edited)).sum(-1).mean())
        finally:
            editor.revert_steps(records)
    if cfg.reg == "l2":
        loss += cfg.reg_coef * shift_penalty(editor, records, cfg, locality_keys)[0]
    return loss


def warm_normalisers(editor: SMEditor, requests: Sequence[EditRequest]) -> None:
    """Seed every step's normaliser with captures of unedited-model edits.

    Normalised inputs are what the step size is calibrated against, so the statistics must exist
    before calibration; training keeps updating them with each step's own captures.
    """
    captures = editor.capture(requests)
    for step in range(editor.config.n_steps):
        editor.update_stats(step, captures)


def calibrate_init_lr(editor: SMEditor, requests: Sequence[EditRequest], cfg: TrainConfig) -> float:
    """Pick the untrained editor's step size from a log grid by the training objective.

    MALMEN's ``lr`` scale depends on the model's key and gradient magnitudes (orders of magnitude
    between a 1M-parameter demo model and GPT-J); a log-lr far off wastes a short run walking there.
    Each candidate is scored by the training objective, averaged over ``requests`` in batches of
    ``cfg.batch_size`` (on one batch the pick swung a grid step between seeds, and so did the
    trained editor's balance); the best half-decade point is refined to a quarter decade.
    """
    batches = [list(requests[i : i + cfg.batch_size]) for i in range(0, len(requests), cfg.batch_size)]

    def score(lr: float) -> float:
        for step_nets in editor.nets:
            for net in step_nets.values():
                net.log_lr.weight.data.fill_(math.log(lr))
        values = [_objective(editor, batch, cfg) for batch in batches]
        return sum(values) / len(values)

    scores = {lr: score(lr) for lr in CALIBRATION_GRID}
    coarse = min(scores, key=lambda lr: scores[lr] if math.isfinite(scores[lr]) else float("inf"))
    for lr in (coarse * 10.0 ** -0.25, coarse * 10.0**0.25):
        scores[lr] = score(lr)
    best_lr = min(scores, key=lambda lr: scores[lr] if math.isfinite(scores[lr]) else float("inf"))
    for step_nets in editor.nets:
        for net in step_nets.values():
            net.log_lr.weight.data.fill_(math.log(best_lr))
    return best_lr


# ---- validation ----------------------------------------------------------------------------
def quick_validate(editor: SMEditor, requests: Sequence[EditRequest], batch_size: int) -> dict[str, float]:
    """Token-level ES, GS and LS of the editor on held-out requests, edited batch by batch."""
    from editor_core.evaluate import evaluate_editing  # local: evaluate imports train's users

    report = evaluate_editing(
        editor.model, editor.tokenizer, editor.edit, requests, batch_size=batch_size, generation=False
    )
    return {k: report["summary"][k] for k in ("es", "gs", "ls") if report["summary"].get(k) is not None}


# ---- the loop ------------------------------------------------------------------------------
def _check_resumable(out: Path, config: TrainConfig) -> None:
    """Refuse to continue a run made with other settings (``max_steps`` may grow)."""
    saved = json.loads((out / "editor.json").read_text()).get("train_config") or {}
    wanted = asdict(config)
    differ = sorted(k for k in wanted if k != "max_steps" and k in saved and saved[k] != wanted[k])
    if differ:
        details = ", ".join(f"{k}: {saved[k]!r} -> {wanted[k]!r}" for k in differ)
        raise ValueError(
            f"{out} holds a training run with other settings ({details}); "
            "use another output directory, or delete it to start over"
        )


def _save_checkpoint(editor: SMEditor, optimizer: torch.optim.Optimizer, out_dir: Path, step: int,
                     cfg: TrainConfig, history: list[dict], rng: random.Random) -> None:
    extra = {"train_config": asdict(cfg), "train_step": step, "history": history}
    editor.save(out_dir, extra)
    torch.save(
        {"optimizer": optimizer.state_dict(), "step": step, "rng": rng.getstate(),
         "torch_rng": torch.get_rng_state()},
        out_dir / "trainer_state.pt",
    )


def meta_train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_requests: Sequence[EditRequest],
    val_requests: Sequence[EditRequest],
    config: TrainConfig,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    preserve: Sequence[EditRequest] | None = None,
) -> SMEditor:
    """Meta-train an editor for ``model`` and save it (and resumable trainer state) to ``out_dir``.

    Seeded: the same data, config and seed give the same editor. With ``resume``, a run stopped
    midway continues from its last checkpoint in ``out_dir``. ``preserve`` (facts the model
    knows, with its answers) is what ``key_source="corpus"`` fits the key moments on, before
    training, so that training solves exactly as editing will.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(train_requests) < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} training requests, got {len(train_requests)}")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    pool = list(train_requests)
    start, history = 0, []
    state_path = out / "trainer_state.pt"
    if resume and state_path.is_file() and (out / "editor.json").is_file():
        _check_resumable(out, config)
        editor = SMEditor.load(out, model, tokenizer)
        optimizer = torch.optim.Adam(editor.parameters(), lr=config.meta_lr)
        state = torch.load(state_path, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        history = json.loads((out / "editor.json").read_text()).get("history", [])
    else:
        editor = SMEditor(model, tokenizer, config.editor_config())
        if config.key_source == "corpus":
            if not preserve:
                raise ValueError('key_source="corpus" needs the facts to preserve (meta_train(..., preserve=...))')
            editor.fit_key_moments(preserve)
        if config.init_lr is None:
            calibration = rng.sample(pool, min(len(pool), CALIBRATION_BATCHES * config.batch_size))
            warm_normalisers(editor, rng.sample(pool, min(len(pool), 4 * config.batch_size)))
            editor.config.init_lr = calibrate_init_lr(editor, calibration, config)
        optimizer = torch.optim.Adam(editor.parameters(), lr=config.meta_lr)
    val = list(val_requests)[: config.val_size]
    history_keys = (request_keys(editor.model, tokenizer, editor.module_names, pool, config.max_length)
                    if config.live_history and config.live_weight > 0 else None)  # the model never changes
    bar = tqdm(range(start, config.max_steps), desc=f"meta-train S={config.n_steps} {config.reg}",
               disable=not progress, initial=start, total=config.max_steps)
    t0 = time.perf_counter()
    for step in bar:
        size = rng.choice(config.batch_sizes) if config.batch_sizes else config.batch_size
        batch = rng.sample(pool, min(size, len(pool)))
        live = []  # other training edits' keys, as if live
        if history_keys is not None and (others := [i for i, r in enumerate(pool) if all(r is not b for b in batch)]):
            live = [history_keys.delta(rng.sample(others, min(config.live_history, len(others))))]
        stats = train_step(editor, batch, config, optimizer, live)
        bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items() if k != "grad_norm"})
        done = step + 1
        if val and (done % config.val_every == 0 or done == config.max_steps):
            scores = quick_validate(editor, val, config.batch_size)
            entry = {"step": done, "seconds": round(time.perf_counter() - t0, 1), **stats,
                     **{f"val_{k}": v for k, v in scores.items()}}
            history.append(entry)
            if log:
                log(entry)
            _save_checkpoint(editor, optimizer, out, done, config, history, rng)
        if not math.isfinite(stats["gen_loss"]):
            raise FloatingPointError(f"meta-training diverged at step {done}: {stats}")
    _save_checkpoint(editor, optimizer, out, config.max_steps, config, history, rng)
    return editor
