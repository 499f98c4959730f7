"""Exporting an edited model: a PEFT LoRA adapter, or a full ``save_pretrained`` directory.

A model version is *base weights + an ordered list of active deltas*. Both exports start from the
base model and that list:

- :func:`export_lora` writes the difference to the base as a LoRA adapter that ``peft`` loads on
  the base model (``PeftModel.from_pretrained``). SMEdit shifts are low-rank (``dW = A @ B``,
  ``[in, out]`` convention), so the adapter is **exact** when the rank allows: the factors of every
  delta touching a module are concatenated (rank = sum of ranks). With ``max_rank`` below that, a
  truncated SVD keeps the best rank-``max_rank`` approximation and the relative Frobenius error
  ``||dW - A'B'|| / ||dW||`` is reported per module. Dense shifts go through the SVD too (their
  numerical rank is kept when no ``max_rank`` is given).
- :func:`export_full` materialises the weights exactly as the service does (``WeightState``:
  fp32 masters + deltas in order, cast once) and writes ``save_pretrained`` safetensors.

PEFT's LoRA computes ``x @ A_l.T @ B_l.T`` with ``A_l = lora_A.weight`` ``[r, in]`` and
``B_l = lora_B.weight`` ``[out, r]`` for ``nn.Linear`` and for GPT-2's ``Conv1D`` alike; only
merging differs (``fan_in_fan_out=True`` for ``Conv1D``, whose weight is ``[in, out]``). Our
``x @ (A @ B)`` therefore maps to ``A_l = A.T``, ``B_l = B.T``, with ``lora_alpha = r`` (scale 1).
All modules get one rank ``r`` (the largest needed), smaller ones padded with zeros (exact).

Nothing here imports ``peft``: the adapter is plain safetensors + ``adapter_config.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from editor_core.arch import get_module, is_in_out, weight_shape
from editor_core.delta import Delta
from editor_core.models import model_fingerprint
from editor_core.solve import Shift, shift_dense
from editor_core.state import WeightState

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
EXPORT_INFO = "smedit_export.json"


@dataclass
class ModuleFactors:
    """The LoRA factors of one module, in the ``[in, out]`` convention: ``dW ~= a @ b``."""

    name: str
    a: torch.Tensor  # [in, rank]
    b: torch.Tensor  # [rank, out]
    full_rank: int  # rank needed for an exact export (sum of factor ranks, or the numerical rank)
    rel_error: float  # ||dW - a @ b||_F / ||dW||_F (0 when exact)
    exact: bool

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])


@dataclass
class ModuleReport:
    name: str
    rank: int
    full_rank: int
    exact: bool
    rel_error: float


@dataclass
class ExportReport:
    """What an export wrote and how faithful it is."""

    kind: str  # "lora" or "model"
    out_dir: str
    n_deltas: int
    modules: list[ModuleReport] = field(default_factory=list)
    rank: int | None = None  # LoRA rank r (all modules; lora_alpha = r)
    exact: bool = True
    max_rel_error: float = 0.0
    weights_hash: str | None = None  # full export: sha256 over the edited modules (as WeightState)
    edited_modules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- factors ------------------------------------------------------------------------------
def module_shifts(deltas: Sequence[Delta]) -> dict[str, list[Shift]]:
    """Per module, the shifts of every delta touching it (in list order)."""
    out: dict[str, list[Shift]] = {}
    for delta in deltas:
        for name in delta.module_names:
            out.setdefault(name, []).append(delta.shifts[name])
    return out


def _svd_factors(
    left: torch.Tensor, core: torch.Tensor, right: torch.Tensor, max_rank: int | None
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """``left @ core @ right`` (``left``/``right.T`` orthonormal) as rank-k factors, k <= max_rank.

    Returns ``(a, b, numerical_rank, rel_error)``; the singular values of ``core`` are those of the
    whole product, so the error of the truncation is read off them exactly.
    """
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    total = float(s.pow(2).sum())
    if total == 0.0:
        return left[:, :0], right[:0, :], 0, 0.0
    tol = float(s[0]) * max(left.shape[0], right.shape[1]) * torch.finfo(torch.float32).eps
    numerical = int((s > tol).sum())
    k = numerical if max_rank is None else min(numerical, max_rank)
    root = s[:k].sqrt()
    a = left @ (u[:, :k] * root)
    b = (root[:, None] * vh[:k]) @ right
    error = math.sqrt(max(total - float(s[:k].pow(2).sum()), 0.0) / total)
    return a, b, numerical, error


def lowrank_factors(name: str, shifts: Sequence[Shift], max_rank: int | None = None) -> ModuleFactors:
    """Factors ``a [in, r]``, ``b [r, out]`` of the sum of ``shifts`` (see the module doc)."""
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    if all(isinstance(s, tuple) for s in shifts):
        a = torch.cat([s[0].detach().cpu() for s in shifts], dim=1)  # type: ignore[index]
        b = torch.cat([s[1].detach().cpu() for s in shifts], dim=0)  # type: ignore[index]
        rank = int(a.shape[1])
        limit = min(a.shape[0], b.shape[1])
        if rank <= limit and (max_rank is None or rank <= max_rank):
            return ModuleFactors(name, a.float().contiguous(), b.float().contiguous(), rank, 0.0, True)
        # too many factors: orthogonalise both sides, SVD of the small core
        qa, ra = torch.linalg.qr(a.double())
        qb, rb = torch.linalg.qr(b.double().T)
        fa, fb, full, error = _svd_factors(qa, ra @ rb.T, qb.T, max_rank)
    else:
        dense = shift_dense(shifts[0]).detach().cpu().double().clone()
        for s in shifts[1:]:
            dense += shift_dense(s).detach().cpu().double()
        eye_l = torch.eye(dense.shape[0], dtype=torch.float64)
        eye_r = torch.eye(dense.shape[1], dtype=torch.float64)
        fa, fb, full, error = _svd_factors(eye_l, dense, eye_r, max_rank)
    # exact: no singular value above the numerical tolerance was dropped (error is then ~1e-8 or less)
    exact = max_rank is None or full <= max_rank
    return ModuleFactors(name, fa.float().contiguous(), fb.float().contiguous(), full, error, exact)


def touched_modules(model: nn.Module, deltas: Sequence[Delta]) -> list[str]:
    """The modules any delta shifts, in the model's module order."""
    touched = {n for d in deltas for n in d.module_names}
    return [n for n, _ in model.named_modules() if n in touched]


# ---- checks -------------------------------------------------------------------------------
_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


def check_base(model: nn.Module, deltas: Sequence[Delta]) -> None:
    """Refuse deltas made for another base model (they would silently corrupt the export)."""
    cache: dict[str, str] = {}
    for i, delta in enumerate(deltas):
        made_for = delta.metadata.get("base_fingerprint")
        if not made_for:
            continue
        dtype_name = delta.metadata.get("dtype", "float32")
        if dtype_name not in cache:
            cache[dtype_name] = model_fingerprint(model, _DTYPE_NAMES.get(dtype_name))
        if cache[dtype_name] != made_for:
            raise ValueError(
                f"delta {i} was made for base model {made_for} (loaded as {dtype_name}), "
                f"but this base model is {cache[dtype_name]}: wrong model directory?"
            )


# ---- exports ------------------------------------------------------------------------------
def lora_state(
    model: nn.Module, deltas: Sequence[Delta], max_rank: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], ExportReport]:
    """The adapter's tensors (PEFT key names), its ``adapter_config`` and the report."""
    shifts = module_shifts(deltas)
    if not shifts:
        raise ValueError("no active deltas: this version is the base model, there is no difference to export")
    factors = [lowrank_factors(name, parts, max_rank) for name, parts in sorted(shifts.items())]
    kinds = {name: is_in_out(get_module(model, name)) for name in shifts}
    if len(set(kinds.values())) > 1:
        raise ValueError("the edited modules mix Conv1D and nn.Linear; one adapter cannot describe both")
    fan_in_fan_out = next(iter(kinds.values()))
    rank = max(1, max(f.rank for f in factors))
    tensors: dict[str, torch.Tensor] = {}
    for f in factors:
        d_in, d_out = weight_shape(get_module(model, f.name))
        if tuple(f.a.shape) != (d_in, f.rank) or tuple(f.b.shape) != (f.rank, d_out):
            raise ValueError(f"{f.name}: shift {tuple(f.a.shape)} @ {tuple(f.b.shape)} does not fit weight [{d_in}, {d_out}]")
        a_l = torch.zeros(rank, d_in)
        b_l = torch.zeros(d_out, rank)
        a_l[: f.rank] = f.a.T
        b_l[:, : f.rank] = f.b.T
        tensors[f"base_model.model.{f.name}.lora_A.weight"] = a_l.contiguous()
        tensors[f"base_model.model.{f.name}.lora_B.weight"] = b_l.contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,  # scale = lora_alpha / r = 1
        "lora_dropout": 0.0,
        "target_modules": [f.name for f in factors],
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    report = ExportReport(
        kind="lora", out_dir="", n_deltas=len(deltas), rank=rank, edited_modules=[f.name for f in factors],
        modules=[ModuleReport(f.name, f.rank, f.full_rank, f.exact, f.rel_error) for f in factors],
        exact=all(f.exact for f in factors), max_rel_error=max(f.rel_error for f in factors),
    )
    return tensors, config, report


def export_lora(
    model: nn.Module,
    deltas: Sequence[Delta],
    out_dir: str | Path,
    max_rank: int | None = None,
    base_model_name_or_path: str | None = None,
    info: dict[str, Any] | None = None,
) -> ExportReport:
    """Write ``deltas`` (summed, in order) as a PEFT LoRA adapter for ``model`` into ``out_dir``.

    ``model`` is only read (module types and shapes). ``info`` goes into ``smedit_export.json``.
    """
    tensors, config, report = lora_state(model, deltas, max_rank)
    config["base_model_name_or_path"] = base_model_name_or_path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    report.out_dir = str(out)
    _write_info(out, report, info)
    return report


def export_full(
    model: nn.Module,
    deltas: Sequence[Delta],
    out_dir: str | Path,
    tokenizer: Any | None = None,
    info: dict[str, Any] | None = None,
    module_names: Sequence[str] | None = None,
) -> ExportReport:
    """Write base + ``deltas`` as a ``save_pretrained`` directory (safetensors), bits as the service has them.

    The weights are set with ``WeightState`` (fp32 masters + deltas in order, cast once to the
    model's dtype), saved, and then ``model`` is put back to its base bits. ``module_names`` (the
    editor's modules, in its order; default: those the deltas touch, in model order) only matter
    for ``weights_hash``, which then equals the service's hash of the same version and dtype.
    """
    names = list(module_names) if module_names is not None else touched_modules(model, deltas)
    state = WeightState(model, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state.set_active(list(deltas))
    try:
        digest = state.weights_hash()
        model.save_pretrained(out, safe_serialization=True)
    finally:
        state.set_active([])
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    report = ExportReport(kind="model", out_dir=str(out), n_deltas=len(deltas), weights_hash=digest,
                          edited_modules=names)
    _write_info(out, report, info)
    return report


def _write_info(out: Path, report: ExportReport, info: dict[str, Any] | None) -> None:
    payload = {"smedit_export": report.as_dict(), **(info or {})}
    (out / EXPORT_INFO).write_text(json.dumps(payload, indent=2, default=str))
