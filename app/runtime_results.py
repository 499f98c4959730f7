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
    # share of canaries whose greedy answer differs from the base model's (for a canary that is a
    # live edit's prompt: from its target) on the candidate state; the same for the whole batch
    canary_changed: float | None
    canary_total: int = 0
    changed_canaries: list[str] = field(default_factory=list)
    gate_s: float | None = None  # time the measurement took (the whole batch's)
    gs_first: float | None = None
    # per row (prompt, then paraphrases): greedy decoding gives the whole target / its first token
    rows_exact: list[bool] = field(default_factory=list)
    rows_first: list[bool] = field(default_factory=list)
    canary_new: float | None = None  # share of canaries this batch changed that the committed state kept
    broken_edits: list[int] = field(default_factory=list)  # live edits whose prompt/paraphrase it broke

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        for key, value in list(out.items()):
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        return out


@dataclass
class Measurement:
    """The gate's view of one candidate state: each edit's numbers, per canary whether it kept
    its reference answer, and the numbers of the live edits it re-checked."""

    edits: list[EditMeasure]
    canary_kept: list[bool]
    recheck: list[EditMeasure] = field(default_factory=list)  # the live edits measured alongside


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
