"""How an editor checkpoint stores its tensors: packed key moments, and older layouts read back.

``SMEditor.save`` writes ``editor.safetensors`` (the state dict, through :func:`pack_moments`)
and ``editor.json``; ``SMEditor.load`` undoes both here before ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from editor_core.editor import SMEditor

# Key moments bigger than this are stored as their upper triangle in fp32 (a symmetric matrix;
# 12 of Llama's 4096 x 4096 would otherwise be 1.5 GB, a tenth of the bf16 model). Smaller ones
# (every demo editor's) are stored whole, in fp64, bit for bit.
PACK_MOMENT_BYTES = 32 << 20


def _packs(key: str, tensor: torch.Tensor) -> bool:
    return key.endswith(".moment") and tensor.dim() == 2 and tensor.numel() * tensor.element_size() > PACK_MOMENT_BYTES


def checkpoint_bytes(state: dict[str, torch.Tensor]) -> int:
    """The tensor bytes ``SMEditor.save`` writes for ``state`` (works on ``meta`` tensors)."""
    return sum(t.shape[0] * (t.shape[0] + 1) // 2 * 4 if _packs(k, t) else t.numel() * t.element_size()
               for k, t in state.items())


def pack_moments(state: dict[str, torch.Tensor]) -> list[str]:
    """Replace large ``d x d`` key moments in ``state`` by their packed upper triangles."""
    packed = []
    for key, tensor in state.items():
        if _packs(key, tensor):
            rows, cols = torch.triu_indices(tensor.shape[0], tensor.shape[0])
            state[key] = tensor[rows, cols].float().contiguous()
            packed.append(key)
    return packed


def unpack_moments(state: dict[str, torch.Tensor], packed: Sequence[str]) -> dict[str, torch.Tensor]:
    for key in packed:
        flat = state[key]
        size = int(round(((8 * flat.numel() + 1) ** 0.5 - 1) / 2))
        rows, cols = torch.triu_indices(size, size, device=flat.device)
        full = torch.zeros(size, size, dtype=torch.float64, device=flat.device)
        full[rows, cols] = flat.double()
        full[cols, rows] = flat.double()
        state[key] = full
    return state


def per_module_moments(state: dict[str, torch.Tensor], editor: "SMEditor") -> dict[str, torch.Tensor]:
    """Checkpoints before TRAINING_VERSION 4 kept one key moment per (step, weight shape); each
    module now has its own, shared by the steps: such a checkpoint gives every module its shape's
    step-1 moment (the edits it makes differ from before only through steps 2..S's moments)."""
    if not any(".key_moment." in k for k in state):
        return state
    converted = {k: v for k, v in state.items() if ".key_moment." not in k}
    for i, name in enumerate(editor.module_names):
        shape_key = editor.slots[name][0]
        for buf in ("count", "moment"):
            converted[f"key_moments.{i}.{buf}"] = state[f"nets.0.{shape_key}.key_moment.{buf}"]
        converted[f"key_moments.{i}.fitted"] = torch.zeros((), dtype=torch.float64)
    return converted
