"""A ``Delta``: the weight shifts one edit request made, as a storable, exactly reversible object.

Shifts are kept low-rank (``dW = A @ B``) where that is smaller than the dense matrix, so a delta
for a handful of facts is a few kilobytes. ``apply_`` remembers the exact bits it overwrote, so
``revert_`` restores them bit for bit in any dtype. Out-of-order reverts (undoing an old edit while
newer ones stay) are the job of ``WeightState``, which rebuilds weights from the base.

A delta may also carry the keys its edit wrote through (``keys``: per module, the ``[n, d_in]``
inputs at the edited tokens). They are never applied; later edits read them to leave this one's
outputs alone (``key_moment.LiveKeys``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from editor_core.arch import get_module, weight_in_out
from editor_core.solve import Shift, merge_shifts, shift_dense, shift_numel

FORMAT_VERSION = "2"
# How a low-rank shift becomes the dense matrix the weights receive (``WeightState``):
# "ordered" (solve.ordered_product: the same bits on every device), or "matmul" for deltas stored
# before format 2 (a @ b on the CPU, as they were formed then, so old histories replay to the
# hashes recorded for them).
PRODUCTS = ("ordered", "matmul")


def compact(shift: Shift) -> Shift:
    """Dense when that is smaller than the low-rank factors."""
    if isinstance(shift, tuple):
        a, b = shift
        if a.numel() + b.numel() >= a.shape[0] * b.shape[1]:
            return a @ b
    return shift


class Delta:
    """Per-module weight shifts in the ``[in, out]`` convention, plus string metadata.

    Metadata records what the delta was made for (``base_fingerprint``, ``editor_id``, ``dtype``)
    so that a delta is never silently applied to another model.
    """

    def __init__(
        self,
        shifts: Mapping[str, Shift],
        metadata: Mapping[str, str] | None = None,
        keys: Mapping[str, torch.Tensor] | None = None,
        product: str = "ordered",
    ) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
        self.shifts: dict[str, Shift] = {name: compact(s) for name, s in shifts.items()}
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        self.keys: dict[str, torch.Tensor] = dict(keys or {})
        self.product = product
        self._backup: dict[str, torch.Tensor] | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def merge(cls, deltas: list["Delta"], metadata: Mapping[str, str] | None = None) -> "Delta":
        """One delta equal to the sum of several (e.g. the S steps of one edit)."""
        by_module: dict[str, list[Shift]] = {}
        keys: dict[str, list[torch.Tensor]] = {}
        for delta in deltas:
            for name, shift in delta.shifts.items():
                by_module.setdefault(name, []).append(shift)
            for name, k in delta.keys.items():
                keys.setdefault(name, []).append(k)
        return cls({name: merge_shifts(parts) for name, parts in by_module.items()}, metadata,
                   {name: torch.cat(parts) for name, parts in keys.items()})

    @classmethod
    def empty(cls, metadata: Mapping[str, str] | None = None) -> "Delta":
        return cls({}, metadata)

    # ---- inspection ---------------------------------------------------------------------
    @property
    def module_names(self) -> list[str]:
        return sorted(self.shifts)

    def dense(self, name: str, exact: bool = False) -> torch.Tensor:
        """The ``[in, out]`` shift of one module, in fp32 (fp64 if it was computed in fp64).

        ``exact``: the bits the weights receive, the same on every device (see :data:`PRODUCTS`);
        otherwise the fast product, for arithmetic whose last bit does not matter."""
        shift = self.shifts[name]
        if not exact or not isinstance(shift, tuple):
            return _at_least_fp32(shift_dense(shift))
        a, b = _at_least_fp32(shift[0]), _at_least_fp32(shift[1])
        if self.product == "matmul":
            return a.cpu() @ b.cpu()
        return shift_dense((a, b), exact=True)

    def numel(self) -> int:
        return sum(shift_numel(s) for s in self.shifts.values())

    def sq_norm(self) -> float:
        """Squared Frobenius norm summed over modules (the size L2 training penalises)."""
        return float(sum(self.dense(n).pow(2).sum() for n in self.shifts))

    def rank(self, name: str) -> int:
        shift = self.shifts[name]
        return shift[0].shape[1] if isinstance(shift, tuple) else min(shift.shape)

    def __contains__(self, name: str) -> bool:
        return name in self.shifts

    def __repr__(self) -> str:
        return f"Delta(modules={len(self.shifts)}, numel={self.numel()}, metadata={self.metadata})"

    # ---- applying -----------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Add the shifts to the model's weights in place (computed in fp32, cast once)."""
        if self._backup is not None:
            raise RuntimeError("this delta is already applied; revert it first")
        backup: dict[str, torch.Tensor] = {}
        for name in self.shifts:
            weight = weight_in_out(get_module(model, name))
            backup[name] = weight.detach().clone()
            shifted = _at_least_fp32(weight) + self.dense(name).to(weight.device)
            weight.copy_(shifted.to(weight.dtype))
        self._backup = backup

    @torch.no_grad()
    def revert_(self, model: nn.Module) -> None:
        """Restore exactly the bits ``apply_`` overwrote."""
        if self._backup is None:
            raise RuntimeError("this delta is not applied")
        for name, saved in self._backup.items():
            weight_in_out(get_module(model, name)).copy_(saved)
        self._backup = None

    @property
    def applied(self) -> bool:
        return self._backup is not None

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator["Delta"]:
        """Apply for the duration of a ``with`` block (e.g. to measure an edit), then revert."""
        self.apply_(model)
        try:
            yield self
        finally:
            self.revert_(model)

    def to(self, device: torch.device | str) -> "Delta":
        moved = {
            n: (s[0].to(device), s[1].to(device)) if isinstance(s, tuple) else s.to(device)
            for n, s in self.shifts.items()
        }
        return Delta(moved, self.metadata, {n: k.to(device) for n, k in self.keys.items()}, self.product)

    # ---- storage ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """safetensors bytes; layout and metadata in the header, tensors on the CPU."""
        tensors: dict[str, torch.Tensor] = {}
        layout: dict[str, str] = {}
        for name, shift in self.shifts.items():
            if isinstance(shift, tuple):
                tensors[f"{name}::A"] = shift[0].detach().cpu().contiguous()
                tensors[f"{name}::B"] = shift[1].detach().cpu().contiguous()
                layout[name] = "lowrank"
            else:
                tensors[f"{name}::W"] = shift.detach().cpu().contiguous()
                layout[name] = "dense"
        for name, keys in self.keys.items():
            tensors[f"{name}::K"] = keys.detach().cpu().contiguous()
        header = dict(self.metadata)
        header["smedit_delta_format"] = FORMAT_VERSION
        header["smedit_product"] = self.product
        header["smedit_layout"] = json.dumps(layout, sort_keys=True)
        return st_save(tensors, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Delta":
        try:
            tensors = st_load(data)
            header = _read_header(data)
        except Exception as exc:  # safetensors raises several error types for corrupt input
            raise ValueError(f"not a valid delta blob: {exc}") from exc
        version = header.pop("smedit_delta_format", None)
        if version not in ("1", FORMAT_VERSION):
            raise ValueError(f"unsupported delta format {version!r}")
        product = header.pop("smedit_product", "matmul" if version == "1" else None)
        if product not in PRODUCTS:
            raise ValueError(f"unsupported dense product {product!r} in a delta of format {version}")
        layout = json.loads(header.pop("smedit_layout"))
        shifts: dict[str, Shift] = {}
        for name, kind in layout.items():
            if kind == "lowrank":
                shifts[name] = (tensors[f"{name}::A"], tensors[f"{name}::B"])
            else:
                shifts[name] = tensors[f"{name}::W"]
        keys = {name[: -len("::K")]: t for name, t in tensors.items() if name.endswith("::K")}
        return cls(shifts, header, keys, product)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "Delta":
        return cls.from_bytes(Path(path).read_bytes())


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Arithmetic on weights happens in fp32 at least, so half-precision models round only once."""
    return x if x.dtype == torch.float64 else x.float()


def _read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (safetensors.torch.load drops it)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__", {}))
