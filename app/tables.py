"""ORM models: the database is the source of truth for edits, versions and deltas.

Portable SQL only (SQLite for embedded mode, PostgreSQL in production): JSON columns, integer
keys, UTC timestamps. The schema itself is owned by Alembic (``migrations/``); these classes
must match the latest migration (a test compares them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored and returned in UTC on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass




class Meta(Base):
    """Key/value facts about the deployment, e.g. the base model fingerprint the DB belongs to."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ApiKey(Base):
    """An API key; only the sha256 of the token is stored, so a DB leak leaks no keys."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DeltaBlob(Base):
    """The weight shift of one committed batch (safetensors bytes + sha256), never modified."""

    __tablename__ = "deltas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    edit_ids: Mapped[list[int]] = mapped_column(JSON)
    module_names: Mapped[list[str]] = mapped_column(JSON)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    compute_s: Mapped[float] = mapped_column(Float, default=0.0)


class Version(Base):
    """A model version: the ordered list of active deltas. Base model = version 0.

    ``number`` is the primary key and is chosen as max+1 inside the committing transaction, so two
    writers can never create the same number (one of them fails the unique constraint).
    """

    __tablename__ = "versions"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # app.status.VersionKind
    active_deltas: Mapped[list[int]] = mapped_column(JSON)
    # sha256 of the edited weights; NULL for a moment after an edit version goes live (the worker
    # records it right after), or until the writer next replays it if it crashed in between
    weights_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    edit_ids: Mapped[list[int]] = mapped_column(JSON, default=list)  # edits this version changed
    # the gate's measurement of this state against the base model: {"changed": k, "total": n,
    # "budget": b, "changed_canaries": [...]}; NULL where no gate pass measured it (revert, restore)
    side_effects: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Edit(Base):
    """One requested fact and everything that happened to it."""

    __tablename__ = "edits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prompt: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    paraphrases: Mapped[list[str]] = mapped_column(JSON, default=list)
    locality: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    author: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    applied_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reverted_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delta_id: Mapped[int | None] = mapped_column(ForeignKey("deltas.id"), nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    submitted_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    supersedes: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the live edit it replaces
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Idempotency(Base):
    """Maps a client's idempotency key to the edits its first submission created."""

    __tablename__ = "idempotency_keys"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    edit_ids: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


_NOT_FAILED = "status != 'failed'"


class Job(Base):
    """A unit of work for the single writer. ``id`` order is the one total order of history.

    ``basis`` is the state a revert, restore or consolidation was accepted against (the edit's
    applied version; the latest version): one (edit, basis) revert, one (target, basis) restore
    and one consolidation per basis that has not failed may exist, so of racing requests the
    database itself accepts exactly one."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("uq_jobs_revert_once", "edit_id", "basis", unique=True,
              sqlite_where=text(f"kind = 'revert' AND {_NOT_FAILED}"),
              postgresql_where=text(f"kind = 'revert' AND {_NOT_FAILED}")),
        Index("uq_jobs_restore_once", "target_version", "basis", unique=True,
              sqlite_where=text(f"kind = 'restore' AND {_NOT_FAILED}"),
              postgresql_where=text(f"kind = 'restore' AND {_NOT_FAILED}")),
        Index("uq_jobs_consolidate_once", "basis", unique=True,
              sqlite_where=text(f"kind = 'consolidate' AND {_NOT_FAILED}"),
              postgresql_where=text(f"kind = 'consolidate' AND {_NOT_FAILED}")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"), nullable=True)
    target_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    basis: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requested_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why (revert, restore, consolidate)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
