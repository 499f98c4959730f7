"""fp32 working copies of a half-precision model's edited modules, for the length of an edit.

A multi-step edit applies step 1's shift to the model before step 2 captures it. Cast into bf16
weights, a shift of 1e-4 on a weight of 0.02 is mostly rounded away (bf16 keeps 8 bits of
mantissa: steps of ~1e-4 there), so step 2 would correct a model the user never gets: the delta
the edit returns is applied once, from fp32. Inside :func:`fp32_working_copies` each edited module
holds an fp32 copy of its weight (and bias); its input is cast up and its output back to the
model's dtype, so the rest of the network runs as before and the applied shifts are exact.
Meta-training's ``dL/dW`` is then taken in fp32 too. On exit the module gets back the very
parameter objects it had: the model is left bit for bit as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from editor_core.arch import get_module

HALF = (torch.bfloat16, torch.float16)


@contextmanager
def fp32_working_copies(model: nn.Module, module_names: Sequence[str]) -> Iterator[list[str]]:
    """Give each half-precision module in ``module_names`` an fp32 weight until the block ends.

    Yields the names of the modules that got one (none on an fp32 model, and none when the
    copies are already in place: nesting is free)."""
    swapped: list[tuple[nn.Module, dict[str, nn.Parameter], list]] = []
    names: list[str] = []
    try:
        for name in module_names:
            module = get_module(model, name)
            if module.weight.dtype not in HALF:
                continue
            dtype = module.weight.dtype
            originals = {attr: getattr(module, attr) for attr in ("weight", "bias")
                         if isinstance(getattr(module, attr, None), nn.Parameter)}
            handles = [
                module.register_forward_pre_hook(_inputs_to_fp32),
                module.register_forward_hook(lambda _m, _args, output, dtype=dtype: output.to(dtype)),
            ]
            swapped.append((module, originals, handles))
            names.append(name)
            for attr, param in originals.items():
                setattr(module, attr, nn.Parameter(param.detach().float(), requires_grad=param.requires_grad))
        yield names
    finally:
        for module, originals, handles in reversed(swapped):
            for handle in handles:
                handle.remove()
            for attr, param in originals.items():
                setattr(module, attr, param)


def _inputs_to_fp32(_module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
