"""Model state as *base weights + an ordered list of active deltas*, rebuilt exactly on demand.

Adding and subtracting floats does not round-trip, so undoing an old edit by subtraction would
drift. Instead the edited modules keep an fp32 master copy of their base weights, and every state
is recomputed as ``cast(master + d1 + d2 + ...)`` in a fixed order: the same active list always
gives the same bits, in any process and on any device, for fp32, bf16 and fp16 models alike
(a low-rank shift becomes its dense matrix by ``solve.ordered_product``, whose roundings do not
depend on the device, where ``a @ b`` would round as the device's GEMM kernel chooses).

Rebuilding from the masters costs one pass over every active delta, which grows with the
history. The running sums of the last few active lists are kept, so the usual moves (try
``active + [new]``, go back to ``active``, commit ``active + [new]``) add only the new delta:
the additions happen in the same order on the same fp32 values, so the bits are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from editor_core.arch import get_module, weight_in_out
from editor_core.delta import Delta
from editor_core.models import tensor_bytes


class WeightState:
    """Owns the edited modules' weights of one model."""

    def __init__(self, model: nn.Module, module_names: Sequence[str]) -> None:
        self.model = model
        self.module_names = list(module_names)
        self._views = {name: weight_in_out(get_module(model, name)) for name in self.module_names}
        self._masters = {
            name: (view.detach().double() if view.dtype == torch.float64 else view.detach().float()).clone()
            for name, view in self._views.items()
        }
        self.active: list[Delta] = []
        # (delta list, fp32 sums per module) of recent states, newest last; the list holds the
        # Delta objects themselves, compared by identity
        self._sums: list[tuple[list[Delta], dict[str, torch.Tensor]]] = []

    #: how many recent states keep their running sums (each costs one fp32 copy of the edited weights)
    cached_states = 2

    @torch.no_grad()
    def set_active(self, deltas: Sequence[Delta]) -> None:
        """Make the model's weights exactly ``base + sum(deltas)`` (in list order)."""
        deltas = list(deltas)
        for delta in deltas:
            unknown = set(delta.module_names) - set(self.module_names)
            if unknown:
                raise ValueError(f"delta touches modules this state does not manage: {sorted(unknown)}")
        if _same(deltas, self.active):
            return  # already there (e.g. committing the state a quality gate just measured)
        start, sums = self._longest_cached_prefix(deltas)
        rest = deltas[start:]
        new_sums: dict[str, torch.Tensor] = {}
        previously = {n for d in self.active for n in d.module_names}
        for name in self.module_names:
            if not any(name in d for d in deltas):
                if name in previously:  # back to the base weights
                    self._views[name].copy_(self._masters[name].to(self._views[name].dtype))
                continue
            weight = sums.get(name, self._masters[name])
            adding = [d for d in rest if name in d]
            for i, delta in enumerate(adding):
                shift = delta.dense(name, exact=True).to(device=weight.device, dtype=weight.dtype)
                if i == 0:
                    weight = weight + shift  # a new tensor: cached sums and masters are never written to
                else:
                    weight += shift
            self._views[name].copy_(weight.to(self._views[name].dtype))
            new_sums[name] = weight
        self.active = deltas
        if self.cached_states > 0:
            self._sums = [entry for entry in self._sums if not _same(entry[0], deltas)]
            self._sums = (self._sums + [(deltas, new_sums)])[-self.cached_states :]

    def _longest_cached_prefix(self, deltas: list[Delta]) -> tuple[int, dict[str, torch.Tensor]]:
        """The cached state whose delta list is the longest prefix of ``deltas`` (else the base)."""
        best: tuple[int, dict[str, torch.Tensor]] = (0, {})
        for cached, sums in self._sums:
            if best[0] < len(cached) <= len(deltas) and _same(cached, deltas[: len(cached)]):
                best = (len(cached), sums)
        return best

    def weights_hash(self) -> str:
        """sha256 of the managed weights' current bits, in module order."""
        digest = hashlib.sha256()
        for name in self.module_names:
            digest.update(name.encode())
            digest.update(tensor_bytes(self._views[name]))
        return digest.hexdigest()


def _same(a: Sequence[Delta], b: Sequence[Delta]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))
