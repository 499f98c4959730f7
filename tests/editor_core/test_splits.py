"""Subsamples and splits: deterministic in their seed, disjoint, complete, order-keeping."""

from __future__ import annotations

import pytest

from editor_core.splits import split_by_subject, split_requests, subsample
from editor_core.types import EditRequest


def test_subsample_is_deterministic_nested_and_ordered() -> None:
    requests = [EditRequest(f"prompt {i}", f"target {i}") for i in range(100)]
    small, large = subsample(requests, 0.1, seed=3), subsample(requests, 0.3, seed=3)
    assert len(small) == 10 and len(large) == 30
    assert small == subsample(requests, 0.1, seed=3) != subsample(requests, 0.1, seed=4)
    assert set(small) <= set(large)
    assert small == sorted(small, key=requests.index)
    assert len(subsample(requests[:3], 0.01)) == 1 and subsample([], 0.5) == []
    with pytest.raises(ValueError):
        subsample(requests, 0.0)


def test_split_requests() -> None:
    requests = [EditRequest(f"prompt {i}", f"target {i}") for i in range(10)]
    train, val = split_requests(requests, [0.8, 0.2], seed=1)
    assert (len(train), len(val)) == (8, 2) and set(train).isdisjoint(val)
    assert set(train) | set(val) == set(requests)
    a, b = split_requests(requests, [3, 4], seed=1)
    assert (len(a), len(b)) == (3, 4) and (a, b) == split_requests(requests, [3, 4], seed=1)
    with pytest.raises(ValueError):
        split_requests(requests, [8, 8])


def test_split_by_subject_keeps_each_subject_in_one_part() -> None:
    requests = [EditRequest(f"{s} fact {k}", f"t{k}", subject=s) for s in "ABCDEFGHIJ" for k in range(3)]
    requests += [EditRequest(f"loose {i}", "x") for i in range(5)]  # no subject: each is its own
    train, dev, test = split_by_subject(requests, [0.7, 0.1, 0.2], seed=3)
    assert sorted(train + dev + test, key=requests.index) == requests  # every record, once
    subjects = [{r.subject or r.prompt for r in part} for part in (train, dev, test)]
    assert all(a.isdisjoint(b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    assert 20 <= len(train) <= 27 and dev and test  # about 70 / 10 / 20 of 35, whole subjects
    assert (train, dev, test) == split_by_subject(requests, [0.7, 0.1, 0.2], seed=3)  # fixed by its seed
    assert (train, dev, test) != split_by_subject(requests, [0.7, 0.1, 0.2], seed=4)
    assert all(part == sorted(part, key=requests.index) for part in (train, dev, test))
    with pytest.raises(ValueError):
        split_by_subject(requests, [0.8, 0.8])
