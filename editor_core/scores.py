"""Measuring an edit the way the field does, plus the stricter checks teacher forcing hides.

- ES / GS: token-level teacher-forced accuracy of the target on the edit prompt / paraphrases
  (MEND, MALMEN, EMSEdit), with the all-tokens ("exact") and first-token variants beside it,
  because trivial trailing tokens ("dollars") flatter the token-level average.
- Generation success: greedy decoding from the prompt actually produces the target text.
- LS: on unrelated prompts, the fraction of answer positions whose argmax is unchanged by the
  edit (teacher forced on the probe's answer, or on the model's own pre-edit continuation).

All functions measure the model as it currently is; callers apply and revert deltas around them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editor_core.tokens import leading_ids, pair_batch, prompt_ids, split_pair
from editor_core.types import EditRequest, LocalityProbe


@dataclass
class TokenScores:
    """Teacher-forced scores of one (prompt, target) pair."""

    token_acc: float
    exact: bool
    first_token: bool
    mean_logprob: float
    argmax: list[int]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def teacher_forced(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 64,
) -> list[TokenScores]:
    """Per pair: token accuracy, exact match, first-token match, mean log-prob, argmax ids."""
    out: list[TokenScores] = []
    device = _device(model)
    for start in range(0, len(prompts), batch_size):
        batch = pair_batch(tokenizer, prompts[start : start + batch_size], targets[start : start + batch_size])
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        logprobs = logits.log_softmax(-1)
        for b in range(batch.input_ids.shape[0]):
            mask = batch.predict_mask[b]
            labels = batch.labels[b][mask]
            lp = logprobs[b][mask]
            argmax = lp.argmax(-1)
            hits = (argmax == labels).float()
            out.append(
                TokenScores(
                    token_acc=float(hits.mean()),
                    exact=bool(hits.all()),
                    first_token=bool(hits[0]),
                    mean_logprob=float(lp.gather(-1, labels[:, None]).mean()),
                    argmax=argmax.tolist(),
                )
            )
    return out


def greedy_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int] = 8,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations (decoded text, special tokens dropped) of each prompt."""
    eos_id = tokenizer.eos_token_id
    answers = []
    for tokens in greedy_token_ids(model, tokenizer, prompts, max_new_tokens, batch_size):
        if eos_id is not None and eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id)]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


@torch.no_grad()
def greedy_token_ids(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int] = 8,
    batch_size: int = 64,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """Greedy continuation ids of each prompt, cut just after the first end-of-text token
    (``stop_at_eos=False``: all ``max_new_tokens`` of them, as free generation for fluency)."""
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = [prompt_ids(tokenizer, p) for p in chunk]
        steps = max(limits[start : start + batch_size])
        width = max(len(ids) for ids in encoded)
        # Left padding keeps every prompt's last token in the last column; explicit position ids
        # keep the model blind to the padding.
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, row in enumerate(encoded):
            ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        generated = _greedy_loop(model, ids, mask, steps, eos_id)
        for b in range(len(chunk)):
            tokens = generated[b, : limits[start + b]].tolist()
            if stop_at_eos and eos_id is not None and eos_id in tokens:
                tokens = tokens[: tokens.index(eos_id) + 1]
            out.append(tokens)
    return out


@torch.no_grad()
def greedy_keeps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> list[bool]:
    """Whether greedy decoding from each prompt would still produce its continuation ids.

    Greedy decoding reproduces a sequence exactly when, fed that sequence, the model's argmax at
    every position is the next token; so one teacher-forced forward pass answers what
    ``len(continuation)`` decoding steps would (the service's gate checks canaries this way).
    """
    rows = [(prompt_ids(tokenizer, p) + list(c), len(c)) for p, c in zip(prompts, continuations)]
    return [bool(h.all()) for h in _answer_hits(model, tokenizer, rows, batch_size)]


def _greedy_loop(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, steps: int, eos_id: int | None) -> torch.Tensor:
    """Greedy decoding with a KV cache; returns ``[batch, steps]`` new token ids."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = out.past_key_values
    next_ids = out.logits[:, -1].argmax(-1)
    new_tokens = [next_ids]
    for _ in range(steps - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
            past_key_values=past, use_cache=True,
        )
        past = out.past_key_values
        next_ids = out.logits[:, -1].argmax(-1)
        new_tokens.append(next_ids)
    return torch.stack(new_tokens, dim=1)


def generation_success(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str]
) -> list[bool]:
    """True where greedy decoding from the prompt starts with the target text."""
    lengths = [len(split_pair(tokenizer, p, t)[1]) for p, t in zip(prompts, targets)]
    answers = greedy_answers(model, tokenizer, prompts, lengths)
    return [_norm(a).startswith(_norm(t)) for a, t in zip(answers, targets)]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


# ---- locality -------------------------------------------------------------------------------
@dataclass
class LocalityReference:
    """Pre-edit answers of locality probes: the text scored and the argmax ids it had."""

    texts: list[str]
    argmax: list[list[int]]


def locality_reference(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, probes: Sequence[LocalityProbe], free_tokens: int = 3
) -> LocalityReference:
    """Record the model's pre-edit predictions on the probes (call before editing)."""
    missing = [i for i, p in enumerate(probes) if not p.answer]
    texts = [p.answer or "" for p in probes]
    if missing:
        free = greedy_answers(model, tokenizer, [probes[i].prompt for i in missing], free_tokens)
        for i, text in zip(missing, free):
            texts[i] = text if text.strip() else tokenizer.eos_token or "."
    scores = teacher_forced(model, tokenizer, [p.prompt for p in probes], texts)
    return LocalityReference(texts, [s.argmax for s in scores])


def locality_scores(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, probes: Sequence[LocalityProbe], ref: LocalityReference
) -> list[float]:
    """Per probe, the fraction of answer positions whose argmax the edit left unchanged."""
    scores = teacher_forced(model, tokenizer, [p.prompt for p in probes], ref.texts)
    result = []
    for now, before in zip(scores, ref.argmax):
        same = sum(int(a == b) for a, b in zip(now.argmax, before))
        result.append(same / max(1, len(before)))
    return result


# ---- per-request scores (used by the service's quality gate) -------------------------------
@dataclass
class RequestScores:
    """ES / GS (token-level, exact, first token) and generation success of one request."""

    es: float
    es_exact: float
    es_first: float
    es_gen: float
    gs: float | None
    gs_exact: float | None
    gs_first: float | None
    gs_gen: float | None
    # per row (the prompt, then each paraphrase): greedy decoding gives the whole target / its
    # first token (filled by :func:`gate_scores`, which the service's gate reads row by row)
    rows_exact: tuple[bool, ...] = ()
    rows_first: tuple[bool, ...] = ()


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def score_requests(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    generation: bool = True,
) -> list[RequestScores]:
    """ES and GS of each request on the model as it is now (apply the delta first)."""
    prompts = [r.prompt for r in requests]
    targets = [r.target for r in requests]
    es = teacher_forced(model, tokenizer, prompts, targets)
    para_prompts = [p for r in requests for p in r.paraphrases]
    para_targets = [r.target for r in requests for _ in r.paraphrases]
    gs = teacher_forced(model, tokenizer, para_prompts, para_targets) if para_prompts else []
    es_gen = generation_success(model, tokenizer, prompts, targets) if generation else [False] * len(prompts)
    gs_gen = (
        generation_success(model, tokenizer, para_prompts, para_targets)
        if generation and para_prompts
        else [False] * len(para_prompts)
    )
    out: list[RequestScores] = []
    cursor = 0
    for i, request in enumerate(requests):
        k = len(request.paraphrases)
        g, gg = gs[cursor : cursor + k], gs_gen[cursor : cursor + k]
        cursor += k
        out.append(
            RequestScores(
                es=es[i].token_acc,
                es_exact=float(es[i].exact),
                es_first=float(es[i].first_token),
                es_gen=float(es_gen[i]) if generation else float("nan"),
                gs=_mean([s.token_acc for s in g]),
                gs_exact=_mean([float(s.exact) for s in g]),
                gs_first=_mean([float(s.first_token) for s in g]),
                gs_gen=_mean([float(x) for x in gg]) if generation else None,
            )
        )
    return out


@torch.no_grad()
def gate_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    canaries: Sequence[str] = (),
    canary_answers: Sequence[Sequence[int]] = (),
    batch_size: int = 64,
    canary_ids: Sequence[Sequence[int]] | None = None,
    pair_ids: Callable[[str, str], tuple[list[int], list[int]]] | None = None,
) -> tuple[list[RequestScores], list[bool]]:
    """Teacher-forced ES/GS of every request and whether every canary keeps its greedy answer,
    all from one padded forward pass (per ``batch_size`` rows).

    The same numbers as :func:`score_requests` with ``generation=False`` (``*_gen`` left unset:
    the exact match is greedy success) and :func:`greedy_keeps`, for the price of one call: on a
    small model the fixed cost of each forward (masks, kernel launches) rivals its arithmetic, and
    a quality gate that runs on every edit pays it three times over otherwise. ``canary_ids``:
    the canaries' :func:`prompt_ids`, if the caller keeps them (they never change); ``pair_ids``:
    a (cached) :func:`split_pair` for the requests' rows, which a service re-reads on every edit.
    """
    if len(canaries) != len(canary_answers):
        raise ValueError("every canary needs its reference answer ids")
    lead = leading_ids(tokenizer)
    rows: list[tuple[list[int], int]] = []  # (ids, number of answer tokens at the end)
    pair = pair_ids or (lambda prompt, target: split_pair(tokenizer, prompt, target))
    for r in requests:
        for prompt in (r.prompt, *r.paraphrases):
            p_ids, t_ids = pair(prompt, r.target)
            rows.append((lead + p_ids + t_ids, len(t_ids)))
    if canary_ids is None:
        canary_ids = [prompt_ids(tokenizer, prompt) for prompt in canaries]
    for ids, answer in zip(canary_ids, canary_answers):
        rows.append((list(ids) + list(answer), len(answer)))
    hits = _answer_hits(model, tokenizer, rows, batch_size)

    scores: list[RequestScores] = []
    cursor = 0
    for r in requests:
        es, paras = hits[cursor], hits[cursor + 1 : cursor + 1 + len(r.paraphrases)]
        cursor += 1 + len(r.paraphrases)
        scores.append(RequestScores(
            es=float(es.float().mean()), es_exact=float(es.all()), es_first=float(es[0]), es_gen=float("nan"),
            gs=_mean([float(h.float().mean()) for h in paras]), gs_exact=_mean([float(h.all()) for h in paras]),
            gs_first=_mean([float(h[0]) for h in paras]), gs_gen=None,
            rows_exact=tuple(bool(h.all()) for h in (es, *paras)),
            rows_first=tuple(bool(h[0]) for h in (es, *paras)),
        ))
    kept = [bool(h.all()) for h in hits[cursor:]]
    return scores, kept


_PLAIN_HEAD: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def _plain_head(model: nn.Module) -> bool:
    """Whether the logits are the output embeddings applied to the body's last hidden state
    (GPT-2, Llama, ...; not BERT's transform-then-decode head), checked once per model on a
    short input: only then may the head run on a subset of positions."""
    if model in _PLAIN_HEAD:
        return _PLAIN_HEAD[model]
    body, head = getattr(model, "base_model", model), model.get_output_embeddings()
    plain = False
    if body is not model and head is not None:
        ids = torch.arange(1, 6, device=_device(model)).unsqueeze(0) % max(1, head.weight.shape[0])
        try:
            full = model(input_ids=ids).logits
            split = head(body(input_ids=ids).last_hidden_state)
            plain = full.shape == split.shape and torch.allclose(full, split, rtol=1e-4, atol=1e-5)
        except (AttributeError, TypeError):
            plain = False
    _PLAIN_HEAD[model] = plain
    return plain


def _answer_hits(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[tuple[list[int], int]], batch_size: int
) -> list[torch.Tensor]:
    """Per row, whether the argmax at each answer position is the answer token (bool tensor).

    The output head runs only at the answer positions (a few per row, of a vocabulary-wide
    matrix product at every position otherwise): the body's last hidden states, then the head on
    the positions asked for. Only where that is what the model computes (:func:`_plain_head`);
    other models get full logits. An empty answer (a canary whose reference is empty) counts as
    kept: ``all()`` of nothing."""
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    body, head = getattr(model, "base_model", model), model.get_output_embeddings()
    split = _plain_head(model)
    out: list[torch.Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (row, _) in enumerate(chunk):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        spans = [(len(row) - n_answer - 1, len(row) - 1) for row, n_answer in chunk]
        if split:
            hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            b_idx = torch.tensor([b for b, (lo, hi) in enumerate(spans) for _ in range(lo, hi)], dtype=torch.long)
            p_idx = torch.tensor([p for lo, hi in spans for p in range(lo, hi)], dtype=torch.long)
            picked = head(hidden[b_idx.to(device), p_idx.to(device)]).argmax(-1).cpu()
            cursor = 0
            for b, (lo, hi) in enumerate(spans):
                out.append(picked[cursor : cursor + hi - lo] == ids[b, lo + 1 : hi + 1])
                cursor += hi - lo
        else:
            argmax = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
            for b, (lo, hi) in enumerate(spans):
                out.append(argmax[b, lo:hi] == ids[b, lo + 1 : hi + 1])
    return out
