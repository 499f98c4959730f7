"""Dividing edit records into parts: seeded subsamples, random splits, subject-disjoint splits.

Benchmarks and ``smedit train-editor`` take their train / dev / test parts from here, so "which
records were held out" is decided in one place and reproducible from a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from editor_core.types import EditRequest


def _shuffled_indices(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def subsample(requests: Sequence[EditRequest], fraction: float, seed: int = 0) -> list[EditRequest]:
    """A deterministic ``fraction`` of ``requests`` (at least one), in their original order.

    For low-data benchmarks: with one seed, a smaller fraction is always a subset of a larger
    one, so results across fractions differ by the amount of data, not by which facts were drawn.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not requests:
        return []
    k = max(1, round(fraction * len(requests)))
    return [requests[i] for i in sorted(_shuffled_indices(len(requests), seed)[:k])]


def split_requests(requests: Sequence[EditRequest], parts: Sequence[float] | Sequence[int],
                   seed: int = 0) -> tuple[list[EditRequest], ...]:
    """Disjoint random parts, given as fractions (summing to at most 1) or as integer sizes.

    Each part keeps the original order; fractions that sum to 1 use every request.
    """
    n = len(requests)
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        if min(parts, default=0) < 0 or sum(parts) > n:
            raise ValueError(f"sizes {list(parts)} must be non-negative and sum to at most {n}")
        bounds = [sum(parts[:i + 1]) for i in range(len(parts))]
    else:
        if min(parts, default=0) < 0 or sum(parts) > 1 + 1e-9:
            raise ValueError(f"fractions {list(parts)} must be non-negative and sum to at most 1")
        bounds = [min(n, round(sum(parts[:i + 1]) * n)) for i in range(len(parts))]
    order = _shuffled_indices(n, seed)
    starts = [0] + bounds[:-1]
    return tuple([requests[i] for i in sorted(order[a:b])] for a, b in zip(starts, bounds))


def split_by_subject(requests: Sequence[EditRequest], fractions: Sequence[float],
                     seed: int = 0) -> tuple[list[EditRequest], ...]:
    """Disjoint parts of about ``fractions`` of the records whose subjects are disjoint too.

    Every record of one subject lands in the same part, so an entity meta-training saw is never
    evaluated (the records of a subject share facts and phrasings). Subjects are taken in a
    seeded order and each part filled until it holds its share; a record without a subject is
    its own. Each part keeps the original order. Keep ``seed`` fixed across training seeds: the
    test part is then one set that nobody tuned on.
    """
    if min(fractions, default=0) < 0 or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions {list(fractions)} must be non-negative and sum to at most 1")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.subject or f"\x00{r.prompt}", []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n = len(requests)
    goals = [round(sum(fractions[: k + 1]) * n) for k in range(len(fractions))]
    parts: list[list[int]] = [[] for _ in fractions]
    part, taken = 0, 0
    for key in keys:
        while part < len(parts) and taken >= goals[part]:
            part += 1
        if part == len(parts):
            break
        parts[part] += groups[key]
        taken += len(groups[key])
    return tuple([requests[i] for i in sorted(p)] for p in parts)
