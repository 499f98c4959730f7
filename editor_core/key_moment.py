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
equation is ``C + (μ / e^λ) K_liveᵀ K_live`` (:meth:`KeyMoment.precision` directly,
:class:`LivePrecision` incrementally).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editor_core.capture import capture_keys
from editor_core.delta import Delta
from editor_core.tokens import pair_batch
from editor_core.types import EditRequest

PRECONDITIONS = ("full", "diag", "none")
# Above this many inputs "full" keeps the diagonal only: a d x d fp64 moment of GPT-J's fc_out
# (16,384 inputs) is 2 GB per module, more than the model's own bytes over 6 modules. Llama's
# gate/up projections (4,096 inputs, the paper's choice) keep the full moment.
FULL_MAX_WIDTH = 8192
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
        if mode == "full" and size > FULL_MAX_WIDTH:
            warnings.warn(f"precondition 'full' keeps only the diagonal of a {size}-input module's key moment "
                          f"(a full one is {size * size * 8 / 2**30:.1f} GiB; above {FULL_MAX_WIDTH} inputs)",
                          stacklevel=2)
            mode = "diag"
        self.mode = mode
        self.shrinkage = shrinkage
        shape = (size, size) if mode == "full" else (size,) if mode == "diag" else (0,)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("moment", torch.zeros(shape, dtype=torch.float64))
        # 1 once fitted on a preservation corpus: training updates then leave it alone
        self.register_buffer("fitted", torch.zeros((), dtype=torch.float64))
        self._precision: dict[torch.dtype, torch.Tensor] = {}  # C⁻¹ per dtype asked for (fp32 at edit time)
        self.revision = 0  # bumped whenever the moment changes: what caches of its inverse check

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
        self._invalidate()

    def _accumulate(self, keys: torch.Tensor) -> None:
        k = keys.detach().to(device=self.moment.device, dtype=torch.float64)
        batch = k.T @ k if self.mode == "full" else (k * k).sum(0)
        total = self.count + k.shape[0]
        self.moment.mul_(self.count / total).add_(batch / total)
        self.count.copy_(total)
        self._invalidate()

    def _invalidate(self) -> None:
        self._precision = {}
        self.revision += 1

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._invalidate()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to()/.cuda() move buffers; the cached inverse is derived from them, so drop it
        self._invalidate()
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
            if dtype not in self._precision:
                c = self.shrunk()
                if c is None:
                    return None
                self._precision[dtype] = _inverse(c).to(dtype)  # inverted in fp64, kept in the dtype used
            return self._precision[dtype]
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


class LivePrecision:
    """``(C + α Σ_live KᵢᵀKᵢ)⁻¹`` per (step, module), kept current as live deltas are appended.

    Inverting a ``d_in × d_in`` matrix for every step of every edit would cost more than the edit
    itself; a delta appended to the live list (the service's usual move) is a rank-k update of
    the inverse instead (Woodbury: ``O(k d²)`` for its k keys). Any other change of the list
    recomputes from ``C⁻¹``. The deltas themselves are held (not their ``id``), so a freed delta
    can never alias a new one.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str], tuple[tuple[float, int], tuple, torch.Tensor]] = {}

    def get(self, step: int, name: str, moment: KeyMoment, alpha: float, deltas: Sequence) -> torch.Tensor:
        """The fp64 precision for ``name`` at ``step`` with live ``deltas`` weighted by ``alpha``."""
        deltas = tuple(d for d in deltas if name in d.keys)
        cached = self._cache.get((step, name))
        stamp = (alpha, moment.revision)
        if cached is not None and cached[0] == stamp and _is_prefix(cached[1], deltas):
            precision, done = cached[2], len(cached[1])
        else:
            precision, done = _dense_precision(moment), 0
        new = [d.keys[name] for d in deltas[done:]]
        if new:
            keys = torch.cat(new).to(device=precision.device, dtype=torch.float64)
            if done == 0 and keys.shape[0] > moment.size:  # more rows than inputs: one inverse is cheaper
                precision = moment.precision(torch.float64, alpha * keys.T @ keys)
            else:
                precision = _woodbury(precision, keys, alpha)
        self._cache[(step, name)] = (stamp, deltas, precision)
        return precision


def _is_prefix(head: tuple, full: tuple) -> bool:
    return len(head) <= len(full) and all(a is b for a, b in zip(head, full))


def _dense_precision(moment: KeyMoment) -> torch.Tensor:
    p = moment.precision(torch.float64)
    if p is None:
        return torch.eye(moment.size, dtype=torch.float64, device=moment.moment.device)
    return torch.diag(p) if p.dim() == 1 else p


def _woodbury(precision: torch.Tensor, keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(P⁻¹ + α KᵀK)⁻¹ = P - P Kᵀ (I/α + K P Kᵀ)⁻¹ K P``, in chunks of at most d rows."""
    d = precision.shape[0]
    for start in range(0, keys.shape[0], d):
        k = keys[start : start + d]
        pk = precision @ k.T  # [d, k]
        inner = k @ pk + torch.eye(k.shape[0], dtype=k.dtype, device=k.device) / alpha
        precision = precision - pk @ torch.linalg.solve(inner, pk.T)
        precision = (precision + precision.T) / 2  # keep it symmetric against rounding
    return precision


class RequestKeys:
    """Each request's keys at the positions predicting its target, computed once.

    Meta-training protects, at every step, the keys of a fresh sample of other training edits "as
    if they were live" on a model that never changes; running the model over the sample each step
    cost a third of the step (the demo's 128-edit history). Kept here, a sample is a gather; the
    price is every request's keys in fp32 on the CPU, per edited module (requests x target tokens
    x d_in x 4 bytes: ~6 MB for the demo's 972 edits, ~0.5 GB for 10,000 edits at d_in 4,096)."""

    def __init__(self, keys: dict[str, torch.Tensor], counts: Sequence[int]) -> None:
        self.keys = keys  # per module, every request's rows in request order
        self.offsets = [0]
        for count in counts:
            self.offsets.append(self.offsets[-1] + int(count))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def delta(self, indices: Sequence[int]) -> Delta:
        """A keys-only delta of the requests at ``indices``, in that order."""
        spans = [(self.offsets[i], self.offsets[i + 1]) for i in indices]
        return Delta({}, keys={name: torch.cat([k[a:b] for a, b in spans]) for name, k in self.keys.items()})


@torch.no_grad()
def request_keys(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, module_names: Sequence[str],
    requests: Sequence[EditRequest], max_length: int, chunk: int = 32,
) -> RequestKeys:
    """``requests``' keys on ``model`` as it is, by request (see :class:`RequestKeys`)."""
    parts: dict[str, list[torch.Tensor]] = {}
    counts: list[int] = []
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        batch = pair_batch(tokenizer, [r.prompt for r in part], [r.target for r in part], max_length)
        counts += batch.predict_mask.sum(dim=1).tolist()
        for name, keys in capture_keys(model, module_names, batch, positions="predict").items():
            parts.setdefault(name, []).append(keys.float().cpu())
    return RequestKeys({name: torch.cat(k) for name, k in parts.items()}, counts)


def keys_only_delta(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, module_names: Sequence[str],
    requests: Sequence[EditRequest], max_length: int, chunk: int = 32,
) -> Delta:
    """A delta with no shift that records ``requests``' keys (at the positions predicting their
    targets, on ``model`` as it is): what a later solve protects as if they were live edits."""
    return Delta({}, keys=request_keys(model, tokenizer, module_names, requests, max_length, chunk).keys)
