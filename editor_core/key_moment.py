"""What the least-squares solve protects: a key second moment per edited module, and live edits.

The solve (``solve.solve_shift``) penalises ``e^λ · tr(dWᵀ C dW)``: the expected squared change
of the module's output on keys drawn like ``C``. Which keys ``C`` is estimated from decides what
an edit leaves alone:

- ``source="edits"``: a running moment of the edit keys seen in meta-training (the original
  behaviour; cheap, but it protects "typical edits", not what the model knows);
- ``source="corpus"``: fitted once, before meta-training, on keys of what the model already knows
  (its own corpus; MEMIT's preserved-key covariance ``C0``) and frozen.

On top of either, the keys of edits that are already live can be protected (sequential MEMIT):
a new edit then pays ``μ‖K_live dW‖²`` for moving an earlier edit's outputs, which in the normal
equation is ``C + (μ / e^λ) K_liveᵀ K_live`` (see :meth:`KeyMoment.precision`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PRECONDITIONS = ("full", "diag", "none")
KEY_SOURCES = ("edits", "corpus")


class KeyMoment(nn.Module):
    """Second moment ``C = E[k kᵀ]`` of one edited module's keys (or its diagonal), shrunk.

    Updated during meta-training only (``source="edits"``) or fitted once (``fit``); frozen at edit
    time, so the same request edits the same way no matter how many edits came before.
    """

    def __init__(self, size: int, mode: str, shrinkage: float = 0.1) -> None:
        super().__init__()
        if mode not in PRECONDITIONS:
            raise ValueError(f"precondition must be one of {PRECONDITIONS}, got {mode!r}")
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"key_shrinkage must be in (0, 1], got {shrinkage}")
        self.size = size
        self.mode = mode
        self.shrinkage = shrinkage
        shape = (size, size) if mode == "full" else (size,) if mode == "diag" else (0,)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("moment", torch.zeros(shape, dtype=torch.float64))
        # 1 once fitted on a preservation corpus: training updates then leave it alone
        self.register_buffer("fitted", torch.zeros((), dtype=torch.float64))
        self._precision: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, keys: torch.Tensor) -> None:
        """Fold a batch of meta-training keys into the running moment (not once fitted)."""
        if self.mode == "none" or keys.shape[0] == 0 or self.fitted > 0:
            return
        self._accumulate(keys)

    @torch.no_grad()
    def fit(self, key_batches: Sequence[torch.Tensor]) -> None:
        """Set the moment to that of ``key_batches`` (keys of what the model knows) and freeze it."""
        self.count.zero_()
        self.moment.zero_()
        for keys in key_batches:
            if self.mode != "none" and keys.shape[0]:
                self._accumulate(keys)
        self.fitted.fill_(1.0)
        self._precision = None

    def _accumulate(self, keys: torch.Tensor) -> None:
        k = keys.detach().to(device=self.moment.device, dtype=torch.float64)
        batch = k.T @ k if self.mode == "full" else (k * k).sum(0)
        total = self.count + k.shape[0]
        self.moment.mul_(self.count / total).add_(batch / total)
        self.count.copy_(total)
        self._precision = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._precision = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to()/.cuda() move buffers; the cached inverse is derived from them, so drop it
        self._precision = None
        return super()._apply(fn, recurse)

    def shrunk(self) -> torch.Tensor | None:
        """``(1 - s) C + s · mean-eigenvalue · I`` in fp64 (a matrix or a diagonal); None = identity."""
        if self.mode == "none" or self.count < 1:
            return None
        m = self.moment
        if self.mode == "full":
            scale = torch.trace(m) / m.shape[0]
            eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
            return (1 - self.shrinkage) * m + self.shrinkage * scale * eye
        return (1 - self.shrinkage) * m + self.shrinkage * m.mean()

    def precision(self, dtype: torch.dtype, live: torch.Tensor | None = None) -> torch.Tensor | None:
        """``C⁻¹`` for the solve (matrix or diagonal); None = identity (MALMEN's plain ridge).

        ``live`` is an extra ``[d_in, d_in]`` term added to ``C`` before inverting: the live edits'
        ``(μ / e^λ) K_liveᵀ K_live``. Without it the inverse is cached.
        """
        if live is None:
            if self._precision is None:
                c = self.shrunk()
                if c is None:
                    return None
                self._precision = _inverse(c)
            return self._precision.to(dtype)
        c = self.shrunk()
        live = live.to(device=self.moment.device, dtype=torch.float64)
        if c is None:
            c = torch.eye(self.size, dtype=torch.float64, device=live.device)
        elif c.dim() == 1:
            c = torch.diag(c)
        return _inverse(c + live).to(dtype)


def _inverse(c: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite matrix (or a diagonal), conditioned by its scale."""
    if c.dim() == 1:
        return 1.0 / c
    scale = torch.trace(c) / c.shape[0]
    return torch.linalg.inv(c / scale) / scale


class LiveKeys:
    """``Σ K_iᵀ K_i`` per module over the keys recorded in the live deltas, built incrementally.

    The service applies deltas in a fixed order and mostly appends, so the sum for a list that
    extends the previous one costs only the new deltas' keys; anything else recomputes. The
    deltas themselves are held (not their ``id``), so a freed delta can never alias a new one.
    """

    def __init__(self) -> None:
        self._deltas: tuple = ()
        self._sums: dict[str, torch.Tensor] = {}

    def moments(self, deltas: Sequence) -> dict[str, torch.Tensor]:
        """Per-module ``Σ KᵀK`` (fp64) over the keys ``deltas`` recorded (deltas without keys add nothing)."""
        deltas = tuple(deltas)
        done = len(self._deltas)
        if done > len(deltas) or any(a is not b for a, b in zip(self._deltas, deltas)):
            self._deltas, self._sums, done = (), {}, 0
        for delta in deltas[done:]:
            for name, keys in delta.keys.items():
                k = keys.to(torch.float64)
                self._sums[name] = self._sums[name] + k.T @ k if name in self._sums else k.T @ k
        self._deltas = deltas
        return self._sums
