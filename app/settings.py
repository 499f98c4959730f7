"""Service settings, read from the environment (prefix ``SMEDIT_``) or a ``.env`` file.

Every knob the service has lives here, so an operator reads one file to know what can be set,
and tests build a ``Settings`` object directly instead of patching globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class Settings(BaseSettings):
    """Configuration of one API (+ worker) process."""

    model_config = SettingsConfigDict(env_prefix="SMEDIT_", env_file=".env", extra="ignore")

    # ---- where things are ----------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="SQLite file, demo model, generated files")
    model_dir: Path | None = Field(None, description="Hugging Face base model dir; none = the demo model")
    editor_dir: Path | None = Field(None, description="SMEdit editor checkpoint; none = demo editor / untrained")
    demo_size: str = Field("small", description="demo size built when no model_dir is set (tiny, small)")
    served_model_name: str | None = Field(
        None, min_length=1, max_length=200, description="the model's name in the OpenAI-compatible API (``model`` in "
        "answers, /v1/models); none = smedit-demo-<size> for the demo, else model_dir's last component",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; none = sqlite under data_dir")
    redis_url: str | None = Field(None, description="Redis URL for the production queue (not needed embedded)")
    queue: Literal["auto", "memory", "db", "redis"] = Field(
        "auto",
        description="job transport: memory (one process), db (poll the jobs table), redis (Streams); "
        "auto = redis when redis_url is set, else memory on SQLite, else db",
    )
    redis_prefix: str = Field("smedit", description="prefix of the Redis stream / channel names")
    device: str = "auto"
    dtype: str | None = None

    # ---- serving -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    run_worker: bool = Field(True, description="start the editing worker in this process (embedded mode)")
    role: Literal["all", "api", "worker"] = Field(
        "all",
        description="all = API + worker in one process (embedded); api = replica without a worker, following "
        "the version log; worker = the editing worker with only /healthz, /readyz, /metrics over HTTP",
    )
    log_level: str = "INFO"
    log_json: bool = True

    # ---- auth ----------------------------------------------------------------------------
    admin_key: str | None = Field(None, description="bootstrap admin key (stored hashed on start)")
    generate_admin_key: bool = Field(True, description="print a new admin key when the DB has none")

    # ---- input limits --------------------------------------------------------------------
    max_prompt_chars: int = 2000
    max_target_chars: int = 500
    max_batch: int = 64
    max_paraphrases: int = 16
    max_locality: int = 16
    max_request_bytes: int = 1_000_000
    max_new_tokens: int = 256
    max_text_field_chars: int = 500  # author / reason / idempotency key

    # ---- worker --------------------------------------------------------------------------
    worker_batch_size: int = Field(16, description="max edit jobs edited as one batch")
    worker_batch_wait_s: float = Field(0.2, description="how long to gather a micro-batch")
    min_version_timeout_s: float = Field(30.0, description="longest wait for min_version")
    requeue_interval_s: float = Field(
        15.0, description="how often the worker re-enqueues, from the database, pending jobs missing from the queue"
    )
    requeue_grace_s: float = Field(2.0, description="a pending job younger than this is not re-enqueued yet")
    claim_idle_s: float = Field(60.0, description="reclaim stream entries another consumer left pending this long")
    gc_freeze: bool = Field(
        True, description="once the model is loaded, move every object alive to the garbage collector's permanent "
                          "generation (gc.freeze), so full collections no longer scan them: they paused the worker "
                          "~0.3 s, the slowest edits' latency, in a process with a model and ~0.5M objects",
    )
    leader_check_interval_s: float = Field(2.0, description="how often the worker verifies it still holds its lock")
    startup_db_wait_s: float = Field(120.0, description="how long start-up waits for an unreachable database")
    redis_timeout_s: float = Field(5.0, description="Redis socket / connect timeout")
    crash_at: str = Field(
        "", description="reliability tests only: kill -9 this process at a named moment (app.crash_points)"
    )
    follow_interval_s: float = Field(
        5.0, description="replicas: safety-net poll of the version log (1 s when following without Redis)"
    )

    # ---- quality gate --------------------------------------------------------------------
    gate_enabled: bool = Field(
        True, description="measure and gate every edit before commit; false = commit unmeasured (trusted bulk loads)"
    )
    gate_match: Literal["exact", "first_token"] = Field(
        "exact", description="what counts as giving the target: greedy decoding produces all of its tokens, "
        "or its first token",
    )
    gate_min_es: float = Field(
        1.0, description="the edit's prompt must give its target (under gate_match); 1 = required, 0 = not checked"
    )
    gate_min_gs: float = Field(0.5, description="least share of the edit's paraphrases that must give its target")
    gate_max_canary_change: float = Field(
        0.05, description="most share of canaries one edit (batch) may change that the committed state kept"
    )
    side_effect_budget: float = Field(
        0.02, description="most share of canaries whose answer may differ from the base model's, all live edits "
        "together; once no canary is left to spend, new edits get 409 capacity (1 = no budget)",
    )
    consolidate_when_spent: bool = Field(
        False, description="queue a consolidation when an edit spends the side-effect budget (measure it with "
        "bench.lifelong consolidate=K first: on the demo it does not help)",
    )
    gate_recheck_edits: int = Field(
        32, ge=0, description="live edits re-checked by every gate pass (half the latest, half a moving window "
        "over the older ones); an edit "
        "that breaks one's prompt or paraphrase is rejected naming it",
    )
    review_mode: bool = Field(False, description="failed edits become needs_review instead of rejected")
    canary_prompts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    canary_file: Path | None = Field(None, description="one canary prompt per line")
    canary_count: int = Field(256, ge=1, description="at most this many canaries (a fixed sample of the file's)")
    canary_tokens: int = 4

    @field_validator("crash_at")
    @classmethod
    def _known_crash_point(cls, value: str) -> str:
        from app.crash_points import parse

        parse(value)
        return value

    @field_validator("canary_prompts", mode="before")
    @classmethod
    def _split_canaries(cls, value: object) -> object:
        """Env vars carry canaries as a JSON list or as ``|``-separated text."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [p for p in text.split("|") if p.strip()]
        return value

    def resolved_database_url(self) -> str:
        """The explicit URL, or an SQLite file in the data directory (embedded mode)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'smedit.db').resolve()}"

    def effective_role(self) -> str:
        """``all`` with ``run_worker=False`` (the older ``--no-worker``) is an API replica."""
        if self.role == "all" and not self.run_worker:
            return "api"
        return self.role

    def resolved_queue(self) -> str:
        if self.queue != "auto":
            return self.queue
        if self.redis_url:
            return "redis"
        return "memory" if self.resolved_database_url().startswith("sqlite") else "db"
