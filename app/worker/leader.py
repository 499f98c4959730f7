"""Leader election: one editing worker per database, others stand by.

On PostgreSQL the writer holds a session advisory lock on a connection of its own; a second
worker process waits as a hot standby and takes over once it gets the lock (the leader died,
stopped or lost its database session). SQLite needs no lock: one embedded process owns the file.

The lock is an optimisation; correctness does not depend on it: every commit is a
compare-and-set on the latest version number and on the edits' statuses
(:class:`app.repository.FencedOff`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("app.worker")

WORKER_LOCK_KEY = 0x5E3D17  # pg advisory lock id: "one editing worker per database"


class WriterLock:
    """The advisory lock that makes one worker the writer, and its liveness checks."""

    def __init__(self, sessions: sessionmaker[Session], check_interval_s: float, worker_id: str) -> None:
        bind = sessions.kw.get("bind")
        self._bind = bind if bind is not None and bind.dialect.name == "postgresql" else None
        self.check_interval_s = check_interval_s
        self.worker_id = worker_id
        self._conn: Any = None
        self._checked = 0.0
        self.waited = False  # this worker has stood by at least once (the next acquire is a take-over)

    def acquire(
        self, stop: threading.Event, on_wait: Callable[[], None], on_unreachable: Callable[[str], None],
        on_acquired: Callable[[], None],
    ) -> bool:
        """Block until this worker holds the lock (True) or ``stop`` is set (False).

        While another worker holds it, ``on_wait`` runs about once a second (a standby keeps
        serving current versions); ``on_acquired`` runs once the lock is held, and releases it
        again if it raises (a half-done take-over must not keep the others out)."""
        if self._bind is None:
            on_acquired()
            self._checked = time.monotonic()
            return True
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = self._bind.connect()
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": WORKER_LOCK_KEY}).scalar()
                conn.commit()
            except Exception as exc:  # noqa: BLE001 - database unreachable: keep trying
                on_unreachable(f"database unavailable: {type(exc).__name__}: {exc}")
                log.warning("cannot reach the database for the worker lock; retrying", extra={"error": str(exc)})
                _discard(conn)
                conn = None
                stop.wait(1.0)
                continue
            if got:
                self._conn = conn
                log.info("worker lock acquired" + (": taking over" if self.waited else ""),
                         extra={"worker": self.worker_id})
                try:
                    on_acquired()
                except Exception:
                    self.release()
                    raise
                self._checked = time.monotonic()
                return True
            if not self.waited:
                log.warning("another worker holds the lock; standing by", extra={"worker": self.worker_id})
            self.waited = True
            try:
                on_wait()
            except Exception:  # noqa: BLE001
                log.exception("standby re-sync failed")
            stop.wait(1.0)
        if conn is not None:
            conn.close()
        return False

    def still_held(self) -> bool:
        """Verify, every ``check_interval_s``, that the lock's session is alive and holds it."""
        if self._conn is None:
            return True  # SQLite: no lock
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return True
        try:
            held = self._conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                     "AND objid = :k AND granted"),
                {"k": WORKER_LOCK_KEY},
            ).scalar()
            self._conn.commit()
        except Exception as exc:  # noqa: BLE001
            log.error("lost the database session holding the worker lock; stepping down", extra={"error": str(exc)})
            _discard(self._conn, close=False)
            return False
        self._checked = now
        if not held:
            log.error("the worker lock is no longer held; stepping down")
        return bool(held)

    def release(self) -> None:
        if self._conn is not None:
            _discard(self._conn, invalidate=False)  # closing the session releases the lock
            self._conn = None


def _discard(conn: Any, invalidate: bool = True, close: bool = True) -> None:
    """Drop a connection that may already be dead (a dead one has released the lock already)."""
    if conn is None:
        return
    try:
        if invalidate:
            conn.invalidate()
        if close:
            conn.close()
    except Exception:  # noqa: BLE001
        pass
