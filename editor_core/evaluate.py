"""The evaluation harness: any editing method, same requests, same metrics.

A method is just ``edit_fn(requests) -> Delta`` (SMEdit, MALMEN, FT-L, no-edit), so comparisons
are like for like. ``batch_size`` n facts are edited at once; ``sequential`` T batches are applied
one after another before measuring, i.e. T×n edits accumulate on the same model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editor_core.delta import Delta
from editor_core.fluency import generation_fluency
from editor_core.scores import (
    locality_reference,
    locality_scores,
    score_requests,
    teacher_forced,
)
from editor_core.types import EditRequest, LocalityProbe

EditFn = Callable[[Sequence[EditRequest]], Delta]

# Request meta keys holding extra paraphrase groups (e.g. the demo world's anchor/unseen phrasings)
# and locality groups (indices into request.locality), reported as gs_<group> / ls_<group>.
PARAPHRASE_GROUP_SUFFIX = "_paraphrases"
LOCALITY_GROUP_PREFIX = "locality_"


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(values) / len(values)) if values else None


def _mean_logprob(model: nn.Module, tok: PreTrainedTokenizerBase, prompts: list[str], targets: list[str]) -> list[float]:
    """Per-token mean log-probability of each target: CounterFact's comparison as ROME scores it
    (a sum would favour whichever answer has fewer tokens)."""
    return [s.mean_logprob for s in teacher_forced(model, tok, prompts, targets)]


def _paraphrase_groups(request: EditRequest) -> dict[str, list[str]]:
    groups = {}
    for key, value in request.meta.items():
        if key.endswith(PARAPHRASE_GROUP_SUFFIX) and isinstance(value, list) and value:
            groups[key[: -len(PARAPHRASE_GROUP_SUFFIX)]] = [str(v) for v in value]
    return groups


def _locality_groups(request: EditRequest) -> dict[str, list[int]]:
    groups = {}
    for key, value in request.meta.items():
        if key.startswith(LOCALITY_GROUP_PREFIX) and isinstance(value, list):
            if all(isinstance(v, int) for v in value):
                groups[key[len(LOCALITY_GROUP_PREFIX) :]] = list(value)
    return groups


def measure_requests(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: list[EditRequest],
    probes: list[list[LocalityProbe]],
    ref_slices: list,
    generation: bool,
) -> list[dict]:
    """Per-request metrics on the model as edited now; ``ref_slices`` are each request's probes'
    :func:`~editor_core.scores.locality_reference` taken before editing (one per request with probes)."""
    scores = score_requests(model, tok, requests, generation=generation)
    # free generation from each edited prompt: does the edited model still write text (ROME's fluency)
    fluency = generation_fluency(model, tok, [r.prompt for r in requests]) if generation else [None] * len(requests)
    flat_probes = [p for ps in probes for p in ps]
    from editor_core.scores import LocalityReference

    flat_ref = LocalityReference(
        [t for s in ref_slices for t in s.texts], [a for s in ref_slices for a in s.argmax]
    )
    ls_flat = locality_scores(model, tok, flat_probes, flat_ref) if flat_probes else []
    # the papers' Specificity: token accuracy of each probe's TRUE answer (LS is "unchanged vs before")
    known = [i for i, p in enumerate(flat_probes) if p.answer]
    tf_known = teacher_forced(model, tok, [flat_probes[i].prompt for i in known],
                              [flat_probes[i].answer for i in known]) if known else []
    spec_flat: list[float | None] = [None] * len(flat_probes)
    for i, s in zip(known, tf_known):
        spec_flat[i] = s.token_acc
    rows, cursor = [], 0
    for request, score, ps, flu in zip(requests, scores, probes, fluency):
        ls = ls_flat[cursor : cursor + len(ps)]
        spec = spec_flat[cursor : cursor + len(ps)]
        cursor += len(ps)
        row = {
            "prompt": request.prompt, "target": request.target,
            "es": score.es, "es_exact": score.es_exact, "es_first": score.es_first, "es_gen": score.es_gen,
            "gs": score.gs, "gs_exact": score.gs_exact, "gs_first": score.gs_first, "gs_gen": score.gs_gen,
            "ls": _mean(ls), "spec": _mean(spec), "fluency": flu,
        }
        for group, indices in _locality_groups(request).items():
            row[f"ls_{group}"] = _mean([ls[i] for i in indices if i < len(ls)])
            row[f"spec_{group}"] = _mean([spec[i] for i in indices if i < len(spec)])
        for group, texts in _paraphrase_groups(request).items():
            tf = teacher_forced(model, tok, texts, [request.target] * len(texts))
            row[f"gs_{group}"] = _mean([s.token_acc for s in tf])
            row[f"gs_{group}_first"] = _mean([float(s.first_token) for s in tf])
            row[f"gs_{group}_exact"] = _mean([float(s.exact) for s in tf])
        row.update(_portability(model, tok, request))
        if request.ground_truth:
            new, old = _mean_logprob(model, tok, [request.prompt] * 2, [request.target, request.ground_truth])
            row["cf_efficacy"] = float(new > old)
            nb = [p for p in ps if p.answer]
            if nb:
                wins = []
                for p in nb:
                    true_lp, new_lp = _mean_logprob(model, tok, [p.prompt] * 2, [p.answer, request.target])
                    wins.append(float(true_lp > new_lp))
                row["cf_neighbourhood"] = _mean(wins)
        rows.append(row)
    return rows


def _portability(model: nn.Module, tok: PreTrainedTokenizerBase, request: EditRequest) -> dict[str, float | None]:
    """KnowEdit's portability: token accuracy of the answers that follow from the edited fact
    (``meta["portability"]``, ``{kind: [{prompt, answer}]}``: reasoning over it, its subject's
    aliases, its logical consequences), as EasyEdit scores it, overall and per kind. Empty when
    the request has no such questions."""
    groups = request.meta.get("portability")
    if not isinstance(groups, dict) or not groups:
        return {}
    row: dict[str, float | None] = {}
    every: list[float] = []
    for kind, probes in sorted(groups.items()):
        probes = [p for p in probes if p.get("prompt") and p.get("answer")]
        if not probes:
            continue
        acc = [s.token_acc for s in teacher_forced(model, tok, [p["prompt"] for p in probes],
                                                    [p["answer"] for p in probes])]
        row[f"portability_{kind.lower()}"] = _mean(acc)
        every += acc
    row["portability"] = _mean(every)
    return row


def paraphrase_ceiling(model: nn.Module, tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> dict:
    """What the unedited model gives on each paraphrase group of the edited facts, for the TRUE
    answer (``ground_truth``): ``gs_<group>_ceiling``, token accuracy. An editor that moves an
    answer cannot be expected to generalise to phrasings the model does not understand for the
    facts it knows, so GS on a group is read against this."""
    out: dict[str, float | None] = {}
    texts: dict[str, list[tuple[str, str]]] = {}
    for r in requests:
        if r.ground_truth:
            for group, phrasings in _paraphrase_groups(r).items():
                texts.setdefault(group, []).extend((t, r.ground_truth) for t in phrasings)
    for group, pairs in sorted(texts.items()):
        tf = teacher_forced(model, tok, [p for p, _ in pairs], [a for _, a in pairs])
        out[f"gs_{group}_ceiling"] = _mean([s.token_acc for s in tf])
    return out


def evaluate_editing(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    edit_fn: EditFn,
    requests: Sequence[EditRequest],
    batch_size: int = 16,
    sequential: int = 1,
    generation: bool = True,
    progress: bool = False,
    pass_live: bool = False,
) -> dict:
    """Edit ``requests`` in batches and measure them; the model is restored afterwards.

    ``pass_live``: call ``edit_fn(batch, live=deltas)`` with the deltas applied so far (an
    ``SMEditor.edit`` that protects live edits), as the service does.

    A ``batch_size`` larger than the number of requests is clamped to it (one batch of all of
    them); ``timing`` reports ``batch_size`` (used) and ``requested_batch_size``.
    Returns ``{"summary": {metric: mean}, "per_request": [...], "timing": {...}}``.
    """
    requests = list(requests)
    if batch_size < 1 or sequential < 1:
        raise ValueError("batch_size and sequential must be >= 1")
    requested_batch = batch_size
    if requests and batch_size > len(requests):
        batch_size = len(requests)
    probes = [list(r.locality) for r in requests]
    refs = [locality_reference(model, tokenizer, ps) if ps else None for ps in probes]
    group = batch_size * sequential
    rows: list[dict] = []
    edit_seconds: list[float] = []
    bar = tqdm(total=len(requests), desc="evaluate", disable=not progress)
    for start in range(0, len(requests), group):
        chunk = requests[start : start + group]
        applied: list[Delta] = []
        try:
            for b in range(0, len(chunk), batch_size):
                t0 = time.perf_counter()
                batch = chunk[b : b + batch_size]
                delta = edit_fn(batch, live=list(applied)) if pass_live else edit_fn(batch)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                edit_seconds.append(time.perf_counter() - t0)
                delta.apply_(model)
                applied.append(delta)
            idx = range(start, start + len(chunk))
            rows += measure_requests(
                model, tokenizer, chunk, [probes[i] for i in idx],
                [refs[i] for i in idx if refs[i] is not None], generation,
            )
        finally:
            for delta in reversed(applied):
                delta.revert_(model)
        bar.update(len(chunk))
    bar.close()
    keys = sorted({k for row in rows for k in row if k not in ("prompt", "target")})
    summary = {k: _mean([row.get(k) for row in rows]) for k in keys}
    summary["n_requests"] = len(rows)
    return {
        "summary": summary,
        "per_request": rows,
        "timing": {
            "edit_seconds_mean": _mean(edit_seconds),
            "edit_seconds_total": float(sum(edit_seconds)),
            "batch_size": batch_size,
            "requested_batch_size": requested_batch,
            "sequential": sequential,
        },
    }
