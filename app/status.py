"""The lifecycles of edits, jobs and versions, as ``str`` enums.

The members are ``str`` subclasses whose values are exactly what the database stores and the API
returns, so a row read back as a plain string compares equal to its member, and no migration is
needed. Every status the service writes or checks goes through these names.
"""

from __future__ import annotations

from enum import StrEnum


class EditStatus(StrEnum):
    """An edit's lifecycle: ``queued`` -> ``running`` -> one outcome a user sees."""

    QUEUED = "queued"
    RUNNING = "running"
    APPLIED = "applied"
    REJECTED = "rejected"  # failed the gate
    NEEDS_REVIEW = "needs_review"  # failed the gate in review mode: held for a person
    FAILED = "failed"  # computing or committing it raised
    REVERTED = "reverted"
    SUPERSEDED = "superseded"  # replaced by a later edit of the same fact (``superseded_by``)

    @property
    def is_pending(self) -> bool:
        return self in (EditStatus.QUEUED, EditStatus.RUNNING)


class JobKind(StrEnum):
    EDIT = "edit"
    REVERT = "revert"
    RESTORE = "restore"
    CONSOLIDATE = "consolidate"  # re-solve every live edit together from the base weights


class JobStatus(StrEnum):
    """A job's lifecycle: ``pending`` -> ``running`` -> ``done`` or ``failed``."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class VersionKind(StrEnum):
    """What made a version: the base model, applied edits, a revert, a restore, a consolidation."""

    BASE = "base"
    EDIT = "edit"
    REVERT = "revert"
    RESTORE = "restore"
    CONSOLIDATE = "consolidate"  # the same live edits, as one delta solved from the base weights
