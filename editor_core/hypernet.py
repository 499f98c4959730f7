"""The hypernetwork that maps (key, value gradient) pairs to pseudo keys and value gradients.

One network per weight shape (modules of the same shape share it, distinguished by per-module
scale/shift embeddings), as in MALMEN. SMEdit trains a separate one for each of its S steps.
What the solve protects (the key moments) is per module, in ``key_moment.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from editor_core.key_moment import KeyMoment  # noqa: F401  (re-exported: it lived here)

# Bumped when a change alters what meta-training learns, so caches of trained editors (the demo's,
# the benchmarks') retrain instead of reusing editors the old code made. 2: the blocks' gradient
# fix (before it, only the step sizes, ridges and shifts of a hypernetwork ever trained).
# 3: the step size is calibrated on 4 batches and refined to a quarter decade.
# 4: one key moment per edited module (was one per weight shape and step), live-edit keys.
TRAINING_VERSION = 4


class RunningNorm(nn.Module):
    """Feature-wise running mean/std (Welford), updated during meta-training only.

    ``frozen`` stops updates, so editing never changes the editor: the same request edits the
    same way no matter how many edits came before.
    """

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count.copy_(total)

    @property
    def std(self) -> torch.Tensor:
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return (x - mean) / (std + self.eps)


class LowRankBlock(nn.Module):
    """Residual block ``x + scale_m * relu(x A B + b) + shift_m`` with per-module scale/shift.

    ``B`` starts at zero, so an untrained block is the identity and an untrained editor makes a
    plain (preconditioned) gradient step.
    """

    def __init__(self, size: int, rank: int, n_modules: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(size, rank) / math.sqrt(size))
        self.B = nn.Parameter(torch.zeros(rank, size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.scale = nn.Embedding(n_modules, size)
        self.shift = nn.Embedding(n_modules, size)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, module_idx: torch.Tensor) -> torch.Tensor:
        # clamp, not relu: at init the pre-activation is exactly 0, where relu's gradient is 0 and
        # A, B, bias and scale would never receive one; clamp(min=0) passes it through at 0.
        h = (x @ self.A @ self.B + self.bias).clamp(min=0)
        return x + self.scale(module_idx) * h + self.shift(module_idx)


class HyperNet(nn.Module):
    """Maps keys and value gradients to value shifts for modules of one ``[d_in, d_out]`` shape.

    Per module it also learns a step size (``log_lr``: a log parametrisation, since a raw scalar
    barely moves under Adam) and the ridge ``lamda`` of the least-squares solve (ridge = e^lamda).
    """

    def __init__(
        self, d_in: int, d_out: int, rank: int, n_blocks: int, n_modules: int, init_lr: float,
    ) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        size = d_in + d_out
        self.norm = RunningNorm(size)
        self.blocks = nn.ModuleList(LowRankBlock(size, max(1, rank), n_modules) for _ in range(n_blocks))
        self.log_lr = nn.Embedding(n_modules, 1)
        self.lamda = nn.Embedding(n_modules, 1)
        nn.init.constant_(self.log_lr.weight, math.log(init_lr))
        nn.init.zeros_(self.lamda.weight)

    def update_stats(self, keys: torch.Tensor, grads: torch.Tensor) -> None:
        self.norm.update(torch.cat([keys, grads], dim=-1))

    def pseudo(self, keys: torch.Tensor, grads: torch.Tensor, module_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo keys and pseudo value gradients (in normalised space)."""
        idx = torch.full((keys.shape[0],), module_idx, dtype=torch.long, device=keys.device)
        h = self.norm(torch.cat([keys, grads], dim=-1))
        for block in self.blocks:
            h = block(h, idx)
        return h[:, : self.d_in], h[:, self.d_in :]

    def value_diffs(self, keys: torch.Tensor, grads: torch.Tensor, module_idx: int) -> torch.Tensor:
        """Desired output change per token: ``dV = -lr * <k, k~> * g~`` (MALMEN's rule)."""
        pseudo_keys, pseudo_grads = self.pseudo(keys, grads, module_idx)
        lr = self.log_lr.weight[module_idx].exp()
        coeff = (keys * pseudo_keys).sum(-1, keepdim=True)
        return -lr * coeff * pseudo_grads

    def ridge_log(self, module_idx: int) -> torch.Tensor:
        return self.lamda.weight[module_idx, 0]
