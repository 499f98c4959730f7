"""MALMEN's least-squares solve: the weight shift that best realises all value shifts at once.

Given keys ``K [n, d_in]`` and desired value shifts ``dV [n, d_out]``, the shift is the ridge
solution ``dW = (KᵀK + e^λ I)⁻¹ Kᵀ dV``. Because every edited token is one row, a request can hold
one fact or thousands; the facts compete for the same weights and the solve settles them jointly.

With fewer tokens than input features the push-through identity gives the same ``dW`` as
``Kᵀ (KKᵀ + e^λ I)⁻¹ dV``: an ``n × n`` system, and a rank-``n`` factorisation for free.
"""

from __future__ import annotations

import torch

# A low-rank shift is the pair (A [d_in, r], B [r, d_out]) with dW = A @ B; a dense one a tensor.
Shift = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def solve_shift(
    keys: torch.Tensor,
    value_diffs: torch.Tensor,
    log_ridge: torch.Tensor,
    precision: torch.Tensor | None = None,
) -> Shift:
    """Ridge least squares for one module; differentiable in ``value_diffs`` and ``log_ridge``.

    ``precision`` is ``C⁻¹`` for a key-covariance-weighted ridge (a ``[d_in, d_in]`` matrix or a
    ``[d_in]`` diagonal): ``dW = (KᵀK + e^λ C)⁻¹ KᵀdV = C⁻¹Kᵀ (K C⁻¹ Kᵀ + e^λ I)⁻¹ dV``.
    ``None`` is the identity (MALMEN's plain ridge).
    """
    n, d_in = keys.shape
    ridge = log_ridge.exp()
    if precision is None:
        weighted = keys
    elif precision.dim() == 1:
        weighted = keys * precision
    else:
        weighted = keys @ precision  # rows of K C⁻¹ (C is symmetric)
    if n <= d_in:
        gram = keys @ weighted.T
        eye = torch.eye(n, dtype=keys.dtype, device=keys.device)
        b = torch.linalg.solve(gram + ridge * eye, value_diffs)
        return weighted.T.contiguous(), b
    # d×d form, written with the precision so that one code path serves every case:
    # (C⁻¹KᵀK + e^λ I) dW = C⁻¹KᵀdV.
    eye = torch.eye(d_in, dtype=keys.dtype, device=keys.device)
    return torch.linalg.solve(weighted.T @ keys + ridge * eye, weighted.T @ value_diffs)


def shift_dense(shift: Shift, exact: bool = False) -> torch.Tensor:
    """The ``[d_in, d_out]`` matrix of a shift.

    ``exact``: formed by :func:`ordered_product`, the same bits on every device; otherwise by
    ``a @ b``, whose bits depend on the GEMM kernel the device and layout pick.
    """
    if isinstance(shift, tuple):
        a, b = shift
        return ordered_product(a, b) if exact else a @ b
    return shift


# rows of the product formed at once on a CPU: keeps the block being accumulated in cache
_CPU_BLOCK_BYTES = 4 << 20


def ordered_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with one fixed sequence of roundings: the rank-1 terms ``a[:, j] b[j]`` added in
    order of ``j``, every product and every sum rounded to the dtype.

    Matrix multiplication leaves the order of its additions to the kernel (blocking, threads,
    vector width), so two devices, or one device with two layouts, give different bits. Elementwise
    products and sums are exactly rounded by IEEE 754 everywhere, so this gives the same bits on
    any CPU or GPU: what makes weights replayed after a restart, on any device, hash like the live
    ones. It costs ``rank`` passes over the output instead of one GEMM.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=dtype, device=a.device)
    if a.device.type == "cpu":
        rows = max(1, _CPU_BLOCK_BYTES // max(1, b.shape[1] * out.element_size()))
    else:
        rows = a.shape[0]
    for start in range(0, a.shape[0], rows):
        block, part = out[start : start + rows], a[start : start + rows]
        for j in range(a.shape[1]):
            block.add_(part[:, j : j + 1] * b[j : j + 1])  # two roundings: the product, then the sum
    return out


def shift_numel(shift: Shift) -> int:
    if isinstance(shift, tuple):
        return shift[0].numel() + shift[1].numel()
    return shift.numel()


def merge_shifts(shifts: list[Shift]) -> Shift:
    """Sum shifts of one module; stays low-rank while that is smaller than dense."""
    if len(shifts) == 1:
        return shifts[0]
    if all(isinstance(s, tuple) for s in shifts):
        a = torch.cat([s[0] for s in shifts], dim=1)
        b = torch.cat([s[1] for s in shifts], dim=0)
        d_in, d_out = a.shape[0], b.shape[1]
        if a.numel() + b.numel() < d_in * d_out:
            return a, b
    total = shift_dense(shifts[0]).clone()
    for s in shifts[1:]:
        total += shift_dense(s)
    return total
