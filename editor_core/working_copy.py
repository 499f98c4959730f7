"""Working copies of the edited modules' weights, for the length of an edit (or a training step).

A multi-step edit applies step 1's shift to the model before step 2 captures it, then undoes
everything. Two things go wrong if that happens on the model's own weights:

- in bf16, a shift of 1e-4 on a weight of 0.02 is mostly rounded away (bf16 keeps 8 bits of
  mantissa: steps of ~1e-4 there), so step 2 corrects a model the user never gets (the delta the
  edit returns is applied once, from fp32);
- undoing exactly needs a backup of every edited weight per step: at 7B widths three weight-sized
  buffers per module and step (backup, dense shift, sum), gigabytes over a dozen modules.

Inside :class:`WorkingCopies` each edited module holds an fp32 copy of its weight and bias (fp64
stays fp64); half-precision modules cast their input up and their output back, so the rest of
the network runs as before. Steps are added to the copies in place; ``reset`` copies the
originals back (exact: the copies started as their upcast) and leaving the block gives each
module back the very parameter objects it had. Meta-training's ``dL/dW`` is taken on the copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from editor_core.arch import get_module, weight_in_out

HALF = (torch.bfloat16, torch.float16)


class WorkingCopies:
    """``with WorkingCopies(model, names) as copies:`` swaps the copies in; nesting is free (an
    inner block over the same modules reuses the outer one's copies)."""

    def __init__(self, model: nn.Module, module_names: Sequence[str]) -> None:
        self.model = model
        self.module_names = list(module_names)
        self._originals: dict[str, dict[str, nn.Parameter]] = {}
        self._handles: list = []
        self._depth = 0

    @property
    def active(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> "WorkingCopies":
        self._depth += 1
        if self._depth > 1:
            return self
        try:
            for name in self.module_names:
                self._swap_in(name)
        except BaseException:
            self._restore()
            self._depth = 0
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._restore()

    def weight(self, name: str) -> torch.Tensor:
        """The working copy of ``name``'s weight, as an ``[in, out]`` view."""
        return weight_in_out(get_module(self.model, name))

    @torch.no_grad()
    def add_(self, name: str, shift: torch.Tensor) -> None:
        """Add a dense ``[in, out]`` shift to the copy, rounded once to its dtype."""
        weight = self.weight(name)
        weight.add_(shift.to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def reset(self) -> None:
        """Every copy back to its original's values, bit for bit."""
        for name, originals in self._originals.items():
            module = get_module(self.model, name)
            for attr, param in originals.items():
                getattr(module, attr).copy_(param.detach().to(getattr(module, attr).dtype))

    def _swap_in(self, name: str) -> None:
        module = get_module(self.model, name)
        originals = {attr: getattr(module, attr) for attr in ("weight", "bias")
                     if isinstance(getattr(module, attr, None), nn.Parameter)}
        self._originals[name] = originals
        dtype = module.weight.dtype
        if dtype in HALF:
            self._handles.append(module.register_forward_pre_hook(_inputs_to_fp32))
            self._handles.append(module.register_forward_hook(lambda _m, _args, output, dtype=dtype: output.to(dtype)))
        for attr, param in originals.items():
            copy = param.detach().double() if param.dtype == torch.float64 else param.detach().float()
            setattr(module, attr, nn.Parameter(copy.clone(), requires_grad=param.requires_grad))

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, originals in self._originals.items():
            module = get_module(self.model, name)
            for attr, param in originals.items():
                setattr(module, attr, param)
        self._originals = {}


def _inputs_to_fp32(_module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
