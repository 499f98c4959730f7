"""Model state as *base weights + an ordered list of active deltas*, rebuilt exactly on demand.

Adding and subtracting floats does not round-trip, so undoing an old edit by subtraction would
drift. Instead the edited modules keep an fp32 master copy of their base weights, and every state
is recomputed as ``cast(master + d1 + d2 + ...)`` in a fixed order: the same active list always
gives the same bits, in any process, for fp32, bf16 and fp16 models alike.
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

    @torch.no_grad()
    def set_active(self, deltas: Sequence[Delta]) -> None:
        """Make the model's weights exactly ``base + sum(deltas)`` (in list order)."""
        for delta in deltas:
            unknown = set(delta.module_names) - set(self.module_names)
            if unknown:
                raise ValueError(f"delta touches modules this state does not manage: {sorted(unknown)}")
        touched = {n for d in list(self.active) + list(deltas) for n in d.module_names}
        for name in self.module_names:
            if name not in touched:
                continue
            view = self._views[name]
            weight = self._masters[name].clone()
            for delta in deltas:
                if name in delta:
                    weight += delta.dense(name).to(device=weight.device, dtype=weight.dtype)
            view.copy_(weight.to(view.dtype))
        self.active = list(deltas)

    def weights_hash(self) -> str:
        """sha256 of the managed weights' current bits, in module order."""
        digest = hashlib.sha256()
        for name in self.module_names:
            digest.update(name.encode())
            digest.update(tensor_bytes(self._views[name]))
        return digest.hexdigest()
