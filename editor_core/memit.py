"""MEMIT (Meng et al. 2023): a training-free locate-then-edit baseline, in closed form.

No hypernetwork and no meta-training: for every fact,

1. **target residuals**: a vector ``δ`` added to the residual stream after the last edited layer
   ``L`` is optimised (Adam, a few dozen steps) until the model gives the new target, with a
   weight decay and a norm clamp; the wanted residual is ``z = h_L + δ``;
2. **spread over the edited layers**, lowest first: at layer ``l`` the remaining gap
   ``z - h_L`` (measured on the model as edited so far) is divided by the number of layers left,
   and the MLP output projection takes the least-squares shift that writes it through the
   fact's keys while leaving the preserved keys alone,
   ``ΔW = (KᵀK + λ C₀)⁻¹ Kᵀ R`` (``C₀``: the second moment of the module's keys on what the model
   knows, ``λ``: MEMIT's ``mom2_update_weight``). ``solve.solve_shift`` is that solve.

Two simplifications against the reference: the edited positions are those predicting the target
tokens (the rows SMEdit writes through, so both methods edit the same tokens) rather than the
subject's last token, and there is no KL term on "essence" prompts. ``C₀`` is fitted on the
model's own facts (``fit``), the same preservation set as SMEdit's ``key_source="corpus"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editor_core.arch import default_modules, get_module, weight_in_out
from editor_core.capture import capture_keys
from editor_core.delta import Delta
from editor_core.key_moment import KeyMoment, keys_only_delta
from editor_core.solve import shift_dense, solve_shift
from editor_core.tokens import PairBatch, pair_batch, target_nll
from editor_core.types import EditRequest


@dataclass
class MEMITConfig:
    """MEMIT's settings (names as in its hyperparameter files where they exist)."""

    modules: list[str] | None = None  # MLP output projections, any order (sorted by layer); None: defaults
    v_steps: int = 25  # v_num_grad_steps: Adam steps on each fact's residual
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3  # on ||δ||² / ||h_L||²
    clamp_norm_factor: float = 4.0  # ||δ|| ≤ factor · ||h_L|| per position
    mom2_weight: float = 10.0  # λ: how much the preserved keys weigh against the edit's (chosen on the small demo's dev split)
    key_shrinkage: float = 0.01  # C₀ is shrunk this much towards its mean eigenvalue (a small corpus)
    max_length: int = 128


class MEMITEditor:
    """``edit(requests) -> Delta`` for the same harness as SMEdit; ``fit`` first (``C₀``)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: MEMITConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or MEMITConfig()
        names = list(self.config.modules or default_modules(model))
        self.module_names = sorted(names, key=_layer_index)
        self.moments = {n: KeyMoment(weight_in_out(get_module(model, n)).shape[0], "full", self.config.key_shrinkage)
                        for n in self.module_names}
        self.fitted = False

    def fit(self, known: Sequence[EditRequest]) -> "MEMITEditor":
        """``C₀`` per module from facts the model gives (prompt, its answer), at their answer positions."""
        if not known:
            raise ValueError("MEMIT needs facts the model knows to fit C0 (the preservation set)")
        keys = keys_only_delta(self.model, self.tokenizer, self.module_names, list(known), self.config.max_length).keys
        for name in self.module_names:
            self.moments[name].fit([keys[name]])
        self.fitted = True
        return self

    def edit(self, requests: Sequence[EditRequest]) -> Delta:
        """Optimise the target residuals, spread them over the layers, return the shifts; the
        model is left exactly as it was."""
        if not self.fitted:
            raise RuntimeError("MEMITEditor.fit(known facts) must run before edit (it estimates C0)")
        device = next(self.model.parameters()).device
        batch = pair_batch(self.tokenizer, [r.prompt for r in requests], [r.target for r in requests],
                           self.config.max_length).to(device)
        last = self.module_names[-1]
        h_orig = self._residual(batch, last)
        wanted = h_orig + self._target_shift(batch, last, h_orig)
        views = {n: weight_in_out(get_module(self.model, n)) for n in self.module_names}
        backups = {n: v.detach().clone() for n, v in views.items()}
        shifts = {}
        try:
            for i, name in enumerate(self.module_names):
                keys = capture_keys(self.model, [name], batch, positions="predict")[name].double()
                gap = (wanted - self._residual(batch, last)).double() / (len(self.module_names) - i)
                precision = self.moments[name].precision(torch.float64)
                shift = solve_shift(keys, gap, torch.tensor(math.log(self.config.mom2_weight), dtype=torch.float64),
                                    precision)
                shifts[name] = shift if isinstance(shift, torch.Tensor) else tuple(s.float() for s in shift)
                with torch.no_grad():
                    views[name].add_(shift_dense(shift).to(views[name].dtype))
        finally:
            with torch.no_grad():
                for n, v in views.items():
                    v.copy_(backups[n])
        return Delta({n: (s.float() if isinstance(s, torch.Tensor) else s) for n, s in shifts.items()},
                     {"method": "memit", "mom2_weight": str(self.config.mom2_weight)})

    # ---- the two halves -------------------------------------------------------------------
    @torch.no_grad()
    def _residual(self, batch: PairBatch, module: str) -> torch.Tensor:
        """The residual stream after ``module``'s block at the predicting positions, ``[rows, d]``."""
        out: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inputs: tuple, output) -> None:  # noqa: ANN001
            hidden = output[0] if isinstance(output, tuple) else output
            out.append(hidden[batch.predict_mask].float())

        handle = get_module(self.model, _block_of(module)).register_forward_hook(hook)
        try:
            self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            handle.remove()
        return out[0]

    def _target_shift(self, batch: PairBatch, module: str, h_orig: torch.Tensor) -> torch.Tensor:
        """``δ`` per predicting position: added to ``module``'s output (a summand of the residual
        stream), the model gives the targets; decayed and clamped relative to ``||h_L||``."""
        cfg = self.config
        delta = torch.zeros_like(h_orig, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
        norms = h_orig.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        mask = batch.predict_mask

        def hook(_m: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            shifted = output.clone()
            shifted[mask] = shifted[mask] + delta.to(output.dtype)
            return shifted

        handle = get_module(self.model, module).register_forward_hook(hook)
        try:
            for _ in range(cfg.v_steps):
                with torch.enable_grad():
                    logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    decay = cfg.v_weight_decay * ((delta / norms) ** 2).sum(-1).mean()
                    loss = target_nll(logits, batch).mean() + decay
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
                with torch.no_grad():  # the clamp: ||δ|| ≤ factor · ||h||
                    limit = cfg.clamp_norm_factor * norms
                    scale = (limit / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                    delta.mul_(scale)
        finally:
            handle.remove()
        return delta.detach()


def _layer_index(module: str) -> int:
    match = re.search(r"\.(\d+)\.", module)
    if match is None:
        raise ValueError(f"cannot tell the layer of module {module!r} (expected a '.<index>.' in its name)")
    return int(match.group(1))


def _block_of(module: str) -> str:
    """``transformer.h.5.mlp.c_proj`` -> ``transformer.h.5``: the block whose output is the residual."""
    match = re.search(r"^(.*?\.\d+)\.", module)
    if match is None:
        raise ValueError(f"cannot find the block of module {module!r}")
    return match.group(1)
