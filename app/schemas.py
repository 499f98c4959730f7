"""Pydantic models of the HTTP API (requests and responses).

Input models forbid unknown fields, so a typo ("promt") is a 422 naming the field instead of a
silently ignored value. Limits that depend on settings (lengths, batch size) are checked by
``check_submission`` and reported in the same 422 format, naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.settings import Settings
from app.text_checks import ValidUnicode

T = TypeVar("T")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


Text = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_blank)]


class _In(ValidUnicode, BaseModel):
    """Request bodies: unknown fields refused, and no coercion (``"max_tokens": "3"`` is a 422, not 3)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---- edits --------------------------------------------------------------------------------
class LocalityIn(_In):
    """An unrelated prompt that must keep its answer (``answer`` optional: then the model's own)."""

    prompt: Text
    answer: Text | None = None


class EditIn(_In):
    """One fact: after the edit, ``prompt`` is completed by ``target``."""

    prompt: Text = Field(examples=["The Zentrix X2 costs"])
    target: Text = Field(examples=["49 dollars"])
    paraphrases: list[Text] = Field(default_factory=list, examples=[["How much is the Zentrix X2?"]])
    locality: list[LocalityIn] = Field(default_factory=list)
    supersedes: int | None = Field(
        None, ge=1, le=2**31 - 1, description="id of an applied edit this one replaces (an edit of the same "
        "prompt as a live edit replaces it without this)",
    )


class EditSubmission(_In):
    """One fact (top-level prompt/target) or a batch (``edits``), with audit fields."""

    edits: list[EditIn] = Field(min_length=1)
    author: Text | None = None
    reason: Text | None = None
    idempotency_key: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_fact(cls, data: Any) -> Any:
        """Accept ``{"prompt", "target", ...}`` as a batch of one."""
        if isinstance(data, dict) and "edits" not in data and ("prompt" in data or "target" in data):
            fact_keys = {"prompt", "target", "paraphrases", "locality", "supersedes"}
            fact = {k: v for k, v in data.items() if k in fact_keys}
            rest = {k: v for k, v in data.items() if k not in fact_keys}
            return {**rest, "edits": [fact]}
        return data


def check_submission(sub: EditSubmission, settings: Settings) -> list[dict[str, Any]]:
    """Settings-dependent limits, as pydantic-style error dicts (``loc`` names the field)."""
    errors: list[dict[str, Any]] = []

    def err(loc: tuple[Any, ...], msg: str) -> None:
        errors.append({"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": None})

    if len(sub.edits) > settings.max_batch:
        err(("edits",), f"at most {settings.max_batch} edits per request, got {len(sub.edits)}")
    for i, e in enumerate(sub.edits):
        if len(e.prompt) > settings.max_prompt_chars:
            err(("edits", i, "prompt"), f"longer than {settings.max_prompt_chars} characters")
        if len(e.target) > settings.max_target_chars:
            err(("edits", i, "target"), f"longer than {settings.max_target_chars} characters")
        if len(e.paraphrases) > settings.max_paraphrases:
            err(("edits", i, "paraphrases"), f"at most {settings.max_paraphrases} paraphrases")
        for j, p in enumerate(e.paraphrases):
            if len(p) > settings.max_prompt_chars:
                err(("edits", i, "paraphrases", j), f"longer than {settings.max_prompt_chars} characters")
        if len(e.locality) > settings.max_locality:
            err(("edits", i, "locality"), f"at most {settings.max_locality} locality probes")
        for j, p in enumerate(e.locality):
            if len(p.prompt) > settings.max_prompt_chars:
                err(("edits", i, "locality", j, "prompt"), f"longer than {settings.max_prompt_chars} characters")
    for name in ("author", "reason", "idempotency_key"):
        value = getattr(sub, name)
        if value is not None and len(value) > settings.max_text_field_chars:
            err((name,), f"longer than {settings.max_text_field_chars} characters")
    return errors


class Timings(BaseModel):
    queued_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None


class EditOut(BaseModel):
    id: int
    status: str
    prompt: str
    target: str
    paraphrases: list[str]
    locality: list[dict[str, Any]]
    author: str | None
    reason: str | None
    submitted_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    applied_version: int | None = Field(description="version that applied its current delta")
    reverted_version: int | None
    delta_id: int | None
    metrics: dict[str, Any] | None = Field(description="ES, GS, locality, canary change, gate verdict")
    error: str | None
    timings: Timings
    supersedes: int | None = Field(None, description="the edit this one replaced")
    superseded_by: int | None = Field(None, description="the edit that replaced this one (status superseded)")


class SubmitOut(BaseModel):
    edit_ids: list[int]
    status_urls: list[str]
    status_url: str = Field(description="status of the first edit")
    duplicate: bool = Field(False, description="true when an earlier request with this idempotency key answered")


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    edit_id: int | None
    target_version: int | None
    requested_by: str | None
    reason: str | None = None
    created_at: datetime
    finished_at: datetime | None
    result_version: int | None
    error: str | None


class JobAccepted(BaseModel):
    job_id: int
    status_url: str


class ReviewIn(_In):
    note: Text | None = None


class ActionIn(_In):
    """Why a revert or restore is asked for: kept on the job and in the new version's note."""

    reason: Text | None = None


# ---- versions -----------------------------------------------------------------------------
class VersionOut(BaseModel):
    number: int
    kind: str
    created_at: datetime
    active_deltas: list[int]
    weights_hash: str | None = Field(
        description="sha256 of the edited weights in this version; null for the moment after an edit "
        "version goes live, until the worker has recorded it"
    )
    job_id: int | None
    created_by: str | None
    note: str | None
    edit_ids: list[int]
    live: bool = False
    side_effects: dict[str, Any] | None = Field(
        None, description="the gate's measurement of this version against the base model: canaries whose answer "
        "changed (changed/total/share), the budget, and which; null where not measured",
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# ---- inference ----------------------------------------------------------------------------
class _Inference(_In):
    min_version: int | None = Field(None, ge=0, description="wait until this version is live")
    wait_s: float | None = Field(None, gt=0, le=600, description="longest wait for min_version")


class GenerateIn(_Inference):
    prompt: Text
    max_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=8)
    seed: int | None = None


class GenerateOut(BaseModel):
    text: str
    version: int
    tokens: int
    latency_s: float


class ProbeIn(_Inference):
    prompt: Text
    target: Text


class ProbeOut(BaseModel):
    probability: float
    logprob: float
    rank: int = Field(description="rank of the target's first token (1 = argmax)")
    greedy: bool = Field(description="greedy decoding from the prompt produces the target")
    greedy_text: str
    version: int


# ---- keys ---------------------------------------------------------------------------------
class KeyIn(_In):
    name: Text = Field(max_length=200)
    scopes: list[Literal["read", "edit", "admin"]] = Field(min_length=1)


class KeyOut(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyWhoAmI(BaseModel):
    id: int
    name: str
    scopes: list[str] = Field(description="read, edit, admin (admin implies every scope)")


class KeyCreated(KeyOut):
    key: str = Field(description="the token; shown only now, stored hashed")


# ---- health -------------------------------------------------------------------------------
class Ready(BaseModel):
    ready: bool
    model_loaded: bool
    version_replayed: bool
    worker_running: bool
    live_version: int | None
    weights_hash: str | None = Field(None, description="SHA-256 of the weights this process serves as live_version "
                                     "(null for a moment after a new version goes live, until hashed)")
    detail: str | None = Field(None, description="the start-up error, when start-up failed")
    phase: str = Field("starting", description="what start-up is doing now")
    role: str = Field("all", description="all (API + worker), api (replica) or worker")
    latest_version: int | None = Field(None, description="latest committed version in the database")
    lag: int | None = Field(None, description="latest_version - live_version (versions not yet applied here)")
    worker_leader: bool | None = Field(None, description="this process holds the writer lock (worker roles)")
    database: str = Field("unknown", description="ok, or why the database is unreachable")
    queue: str = Field("unknown", description="ok, or why the job queue (Redis) is unreachable")
    side_effects: dict[str, Any] | None = Field(
        None, description="the latest version against the base model, as the gate measured it"
    )
    warnings: list[str] = Field(default_factory=list, description="conditions that need an operator, e.g. "
                                "the side-effect budget is spent (ready stays true: the service still serves)")


# ---- KPI trends ---------------------------------------------------------------------------
class KpiBucketOut(BaseModel):
    """One time bucket of :func:`app.kpis.kpi_series` (``None`` where nothing was measured)."""

    start: datetime
    end: datetime
    decided: int = Field(description="edits decided in the bucket (applied, rejected, held, failed, ...)")
    statuses: dict[str, int] = Field(description="those edits by their status now")
    accept_rate: float | None = Field(description="share of decided edits that passed the gate")
    edit_success: float | None = Field(description="mean edit success (ES) the gate measured")
    generalisation: float | None = Field(description="mean generalisation (GS) over paraphrases")
    side_effects: float | None = Field(description="mean share of canaries an edit's batch changed")
    side_effects_vs_base: float | None = Field(
        description="share of canaries whose answer differs from the base model, at the bucket's last measured version")
    cost_s_per_edit: float | None = Field(description="compute seconds per edit (batch compute / batch size)")
    latency_p50_s: float | None = Field(description="median seconds from submission to decision")
    latency_p95_s: float | None


class KpiSeriesOut(BaseModel):
    bucket: str
    since: datetime
    until: datetime
    buckets: list[KpiBucketOut]
