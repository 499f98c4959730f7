"""What the model runtime returns: the gate's measurements and inference results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class ContextTooLong(ValueError):
    """An inference input longer than the model's context; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class EditMeasure:
    """What the gate looks at for one edit, on the candidate model state."""

    es: float
    es_exact: float
    es_first: float
    es_gen: float
    gs: float | None
    gs_exact: float | None
    gs_gen: float | None
    locality: float | None  # mean LS on the edit's own locality probes (None without probes)
    canary_changed: float | None  # fraction of canaries whose greedy answer changed (batch)
    canary_total: int = 0
    changed_canaries: list[str] = field(default_factory=list)
    gate_s: float | None = None  # time the measurement took (the whole batch's)

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        for key, value in list(out.items()):
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        return out


@dataclass
class Measurement:
    """The gate's view of one candidate state: each edit's numbers, and per canary whether it
    kept its answer (the worker's reference for the next edit, if this state is committed)."""

    edits: list[EditMeasure]
    canary_kept: list[bool]


@dataclass
class GenerateResult:
    text: str
    version: int
    tokens: int


@dataclass
class ProbeResult:
    probability: float
    logprob: float
    first_token_rank: int
    greedy: bool
    greedy_text: str
    version: int
