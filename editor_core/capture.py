"""Collecting keys and value gradients of the edited modules at the target positions.

For an edited module with ``[in, out]`` weight ``W``, a *key* is a row of its input and a *value
gradient* the gradient of the edit loss with respect to its output, both taken only where the
model predicts a target token. These pairs are what the hypernetwork turns into a weight shift.

The value gradient is read from a tensor hook on the module output. Model weights do not require
grad, so each output gets a zero scalar that does added to it: that keeps every edited module's
output in the graph (detaching would cut the gradient path of earlier edited layers) at the cost
of one scalar per module instead of a full weight gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from editor_core.arch import get_module
from editor_core.tokens import PairBatch, target_nll


@dataclass
class Capture:
    """Keys ``[n, d_in]`` and value gradients ``[n, d_out]`` of one module, fp32."""

    keys: torch.Tensor
    grads: torch.Tensor


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision captures go to fp32 (the solve needs it); fp64 stays fp64 (for tests)."""
    return x if x.dtype == torch.float64 else x.float()


class _Tap:
    """Hooks one module: records its input rows and output gradient at the masked positions."""

    def __init__(self, module: nn.Module, mask: torch.Tensor) -> None:
        self.mask = mask
        self.keys: torch.Tensor | None = None
        self.grads: torch.Tensor | None = None
        self.anchor = torch.zeros((), requires_grad=True)
        self.handle = module.register_forward_hook(self._forward)

    def _forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        self.keys = _at_least_fp32(inputs[0][self.mask].detach())
        anchored = output + self.anchor.to(device=output.device, dtype=output.dtype)
        anchored.register_hook(self._backward)
        return anchored

    def _backward(self, grad: torch.Tensor) -> None:
        self.grads = _at_least_fp32(grad[self.mask].detach())

    def remove(self) -> None:
        self.handle.remove()


@contextmanager
def _taps(model: nn.Module, module_names: Sequence[str], mask: torch.Tensor):
    taps = {name: _Tap(get_module(model, name), mask) for name in module_names}
    try:
        yield taps
    finally:
        for tap in taps.values():
            tap.remove()


def capture_batch(model: nn.Module, module_names: Sequence[str], batch: PairBatch) -> dict[str, Capture]:
    """One forward/backward pass of the edit loss; returns keys and value gradients per module.

    The loss is the sum over requests of each request's mean target NLL, so a fact's gradients do
    not depend on what else is in the batch.
    """
    device = next(model.parameters()).device
    batch = batch.to(device)
    with torch.enable_grad(), _taps(model, module_names, batch.predict_mask) as taps:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = target_nll(logits, batch).sum()
        anchors = [tap.anchor for tap in taps.values()]
        torch.autograd.grad(loss, anchors, allow_unused=True)
    out: dict[str, Capture] = {}
    for name, tap in taps.items():
        if tap.keys is None or tap.grads is None:
            raise RuntimeError(f"module {name} was not reached by the edit loss")
        out[name] = Capture(tap.keys, tap.grads)
    return out


def concat_captures(parts: Sequence[dict[str, Capture]]) -> dict[str, Capture]:
    """Join the captures of several chunks, module by module, in chunk order."""
    names = parts[0].keys()
    return {
        name: Capture(
            torch.cat([p[name].keys for p in parts]),
            torch.cat([p[name].grads for p in parts]),
        )
        for name in names
    }


@torch.no_grad()
def capture_keys(
    model: nn.Module, module_names: Sequence[str], batch: PairBatch, positions: str = "attended"
) -> dict[str, torch.Tensor]:
    """Keys ``[n, d_in]`` of ``batch`` at each module, forward only.

    What a weight shift ``dW`` will be multiplied by on these prompts: ``keys @ dW`` is the
    change of the module's output there (used to measure a shift on unrelated prompts).
    ``positions``: ``"attended"`` (every token) or ``"predict"`` (where the target is predicted:
    the positions an edit of the same shape would write through)."""
    if positions not in ("attended", "predict"):
        raise ValueError(f"positions must be attended or predict, got {positions!r}")
    device = next(model.parameters()).device
    batch = batch.to(device)
    mask = (batch.attention_mask if positions == "attended" else batch.predict_mask).bool()
    keys: dict[str, torch.Tensor] = {}

    def tap(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            keys[name] = _at_least_fp32(inputs[0][mask].detach())

        return hook

    handles = [get_module(model, name).register_forward_hook(tap(name)) for name in module_names]
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return keys
