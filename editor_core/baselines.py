"""Baselines run through the same harness as SMEdit: no-edit and FT-L (MEMIT: ``editor_core.memit``).

MALMEN is not here: it is ``SMEditor`` with one step, meta-trained with the KL regulariser
(``TrainConfig(n_steps=1, reg="kl")``), so it shares every line of the editing code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editor_core.arch import default_modules, get_module, weight_in_out
from editor_core.delta import Delta
from editor_core.tokens import pair_batch, target_nll
from editor_core.types import EditRequest


class NoEdit:
    """Returns an empty delta: the floor every editor must beat on ES/GS (and the LS ceiling)."""

    def edit(self, requests: Sequence[EditRequest]) -> Delta:
        return Delta.empty({"method": "no-edit"})


@dataclass
class FTLConfig:
    """FT-L (Zhu et al. 2020, as run in ROME): fine-tune the edited modules on the edit prompts,
    keeping every weight within ``norm_bound`` (L-infinity) of its original value."""

    steps: int = 25
    lr: float = 5e-3
    norm_bound: float = 5e-3
    modules: list[str] | None = None


class FTLEditor:
    """Constrained fine-tuning of the same modules SMEdit edits."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: FTLConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or FTLConfig()
        self.module_names = list(self.config.modules or default_modules(model))

    def edit(self, requests: Sequence[EditRequest]) -> Delta:
        """Fine-tune, read off the weight change as a dense delta, restore the model."""
        cfg, model = self.config, self.model
        device = next(model.parameters()).device
        batch = pair_batch(self.tokenizer, [r.prompt for r in requests], [r.target for r in requests]).to(device)
        views = {n: weight_in_out(get_module(model, n)) for n in self.module_names}
        shifts = {n: torch.zeros(v.shape, dtype=torch.float32, device=device, requires_grad=True) for n, v in views.items()}
        originals = {n: v.detach().clone() for n, v in views.items()}
        optimizer = torch.optim.Adam(shifts.values(), lr=cfg.lr)
        handles = [
            get_module(model, n).register_forward_hook(self._shift_hook(shifts[n])) for n in self.module_names
        ]
        try:
            for _ in range(cfg.steps):
                with torch.enable_grad():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    loss = target_nll(logits, batch).mean()
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for s in shifts.values():
                        s.clamp_(-cfg.norm_bound, cfg.norm_bound)
        finally:
            for h in handles:
                h.remove()
        for n, v in views.items():
            assert torch.equal(v, originals[n])
        return Delta({n: s.detach().clone() for n, s in shifts.items()}, {"method": "ft-l"})

    @staticmethod
    def _shift_hook(shift: torch.Tensor):
        """Adds ``input @ shift`` to the module output: fine-tuning without touching the weight."""

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + (inputs[0].float() @ shift).to(output.dtype)

        return hook
