"""The solve's products: ``ordered_product`` gives one set of bits, whatever computes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editor_core import solve
from editor_core.solve import ordered_product, shift_dense


def _factors(d_in: int = 96, rank: int = 24, d_out: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, rank, generator=g) * 1e-2, torch.randn(rank, d_out, generator=g)


def _numpy_ordered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A second implementation of the same roundings: numpy's float32 ufuncs, term by term."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)
    for j in range(a.shape[1]):
        out = out + np.multiply(a[:, j : j + 1], b[j : j + 1])
    return out


def test_ordered_product_is_a_matrix_product():
    a, b = _factors()
    torch.testing.assert_close(ordered_product(a, b), a @ b, rtol=1e-5, atol=1e-7)
    assert ordered_product(a.double(), b.double()).dtype == torch.float64


def test_ordered_product_matches_an_independent_implementation_bit_for_bit():
    a, b = _factors()
    ours = ordered_product(a, b).numpy()
    assert np.array_equal(ours.view(np.uint32), _numpy_ordered(a.numpy(), b.numpy()).view(np.uint32))


def test_ordered_product_bits_do_not_depend_on_layout_threads_or_blocking(monkeypatch):
    a, b = _factors(d_in=300, rank=40, d_out=64)
    reference = ordered_product(a, b)
    # factors stored transposed (another memory layout, as another device's tensors may be)
    a_t, b_t = a.t().contiguous().t(), b.t().contiguous().t()
    assert not a_t.is_contiguous()
    assert torch.equal(ordered_product(a_t, b_t), reference)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ordered_product(a, b), reference)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(solve, "_CPU_BLOCK_BYTES", 7 * 64 * 4)  # 7-row blocks instead of one
    assert torch.equal(ordered_product(a, b), reference)


def test_gemm_paths_differ_where_the_ordered_product_does_not():
    """Why the ordered product exists: two GEMM paths for the same product give different bits."""
    a, b = _factors(d_in=256, rank=200, d_out=256, seed=1)
    gemm = a @ b
    gemv = torch.stack([b.t().mv(row) for row in a])  # the matrix-vector kernel, row by row
    split_k = a[:, :37] @ b[:37] + a[:, 37:] @ b[37:]  # as a kernel blocking the inner dimension adds
    assert not torch.equal(gemm, gemv) and not torch.equal(gemm, split_k)
    torch.testing.assert_close(gemm, gemv)
    assert torch.equal(shift_dense((a, b), exact=True), ordered_product(a, b))


def test_ordered_product_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="cannot multiply"):
        ordered_product(torch.zeros(3, 2), torch.zeros(3, 2))
