"""Putting a model runtime on a committed version: the delta cache, bootstrap and replay.

Every process that serves or writes (the worker, a standby, an API replica) rebuilds its weights
the same way: the version's ordered active delta ids, deserialised once and cached, applied to
the base weights by the runtime. A version's weights are a function of its active list alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.db import session_scope
from app.runtime import Delta, ModelRuntime
from app.status import VersionKind

log = logging.getLogger("app.worker")

ActiveDeltas = list[tuple[int, Delta]]  # (delta id, delta) in application order


class DeltaCache:
    """Deserialised deltas by id (blobs are immutable, so caching is always safe)."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self._cache: dict[int, Delta] = {}

    def put(self, delta_id: int, delta: Delta) -> None:
        self._cache[delta_id] = delta

    def get_many(self, session: Session, ids: Sequence[int]) -> ActiveDeltas:
        missing = [i for i in ids if i not in self._cache]
        if missing:
            for delta_id, blob in repo.load_delta_blobs(session, missing).items():
                delta = self.runtime.delta_from_bytes(blob)
                self.runtime.check_delta(delta)
                self._cache[delta_id] = delta
        return [(i, self._cache[i]) for i in ids]


class ReplayMismatch(RuntimeError):
    """The database belongs to another base model than the one loaded."""


def current_state(session: Session, cache: DeltaCache) -> tuple[int, ActiveDeltas]:
    """The latest committed version's number and its active deltas."""
    latest = repo.latest_version(session)
    if latest is None:
        raise RuntimeError("no base version: the worker must bootstrap before processing jobs")
    return latest.number, cache.get_many(session, latest.active_deltas)


def resync(
    sessions: sessionmaker[Session], runtime: ModelRuntime, cache: DeltaCache,
    only_if_newer: bool = False, record_hash: bool = False,
) -> None:
    """Put the runtime on the latest committed version (after a failure mid-job, or as standby).

    ``record_hash``: a new writer stores the hash its predecessor may have died before storing."""
    with session_scope(sessions) as s:
        latest = repo.latest_version(s)
        if latest is None:
            return
        if only_if_newer and runtime.live_version is not None and latest.number <= runtime.live_version:
            return
        active = cache.get_many(s, latest.active_deltas)
        number, missing = latest.number, latest.weights_hash is None
    digest = runtime.materialize(number, active)
    if record_hash and missing:
        with session_scope(sessions) as s:
            repo.record_weights_hash(s, number, digest)


def bootstrap_and_replay(
    sessions: sessionmaker[Session], runtime: ModelRuntime, cache: DeltaCache, writer: bool
) -> dict[str, Any]:
    """Make the runtime serve the latest committed version.

    The writer also records the base model's fingerprint (a DB belongs to one base model) and
    creates version 0 on an empty database. The replayed weights' hash is compared with the hash
    stored when the version was committed: equal means the restart is bit-exact.
    """
    try:
        return _bootstrap_and_replay(sessions, runtime, cache, writer)
    except IntegrityError:
        if not writer:
            raise
        # another process bootstrapped the same empty database at the same moment: follow it
        return _bootstrap_and_replay(sessions, runtime, cache, writer=False)


def _bootstrap_and_replay(
    sessions: sessionmaker[Session], runtime: ModelRuntime, cache: DeltaCache, writer: bool
) -> dict[str, Any]:
    with session_scope(sessions) as s:
        known = repo.get_meta(s, "base_fingerprint")
        if known is None and writer:
            repo.set_meta(s, "base_fingerprint", runtime.fingerprint)
        elif known is not None and known != runtime.fingerprint:
            raise ReplayMismatch(
                f"this database belongs to base model {known}, but the loaded model is {runtime.fingerprint}; "
                "point SMEDIT_DATABASE_URL / SMEDIT_DATA_DIR at the matching database"
            )
        if writer:  # where the served base model lives: `smedit export` finds it without being told
            repo.set_meta(s, "base_model_dir", str(runtime.model_dir.resolve()))
        latest = repo.latest_version(s)
        if latest is None and writer:
            latest = repo.create_version(s, VersionKind.BASE, [], runtime.base_hash, created_by="system",
                                         note="base model")
        if latest is None:
            return {"version": None}
        active = cache.get_many(s, latest.active_deltas)
        number, stored_hash = latest.number, latest.weights_hash
    digest = runtime.materialize(number, active)
    if stored_hash is None:  # committed, then the writer stopped before recording its hash
        if writer:
            with session_scope(sessions) as s:
                repo.record_weights_hash(s, number, digest)
            log.info("recorded the weights hash of the replayed version", extra={"version": number})
        return {"version": number, "weights_hash": digest, "stored_hash": None, "match": None}
    result = {"version": number, "weights_hash": digest, "stored_hash": stored_hash, "match": digest == stored_hash}
    if digest != stored_hash:
        log.error("replayed weights differ from the committed hash", extra=result)
    else:
        log.info("replayed model version", extra=result)
    return result
