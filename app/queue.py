"""The job queue between the API (producers) and the single worker (consumer).

The queue only transports job ids; the job itself (kind, edit, target version, status) lives in
the database, which stays the source of truth. That makes any transport at-least-once safe: the
worker skips a job whose row is no longer ``pending``, so a redelivered message never applies an
edit twice, and a lost in-process queue is rebuilt from the ``jobs`` table on start.

``InProcessQueue`` serves embedded mode (SQLite). ``DatabaseQueue`` polls the ``jobs`` table, for
a shared database with separate API / worker processes and no Redis. ``RedisStreamQueue`` is the
production transport (``app/redis_queue.py``).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


class QueueUnavailable(RuntimeError):
    """The transport (Redis) cannot be reached; the API answers 503 with this reason."""


@dataclass(frozen=True)
class QueuedJob:
    """A message: the id of a row in ``jobs``; ``receipt`` is transport-specific (stream id)."""

    job_id: int
    receipt: str | None = None


@runtime_checkable
class Queue(Protocol):
    """What the API and the worker need from a queue."""

    def put(self, job_id: int) -> None:
        """Enqueue a job id (after its row is committed)."""

    def put_many(self, job_ids: list[int]) -> None:
        """Enqueue several job ids at once: a consumer sees all of them or none (one submission
        stays one micro-batch)."""

    def check(self) -> None:
        """Raise :class:`QueueUnavailable` when the transport cannot take jobs now."""

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        """Up to ``max_items`` messages in FIFO order; waits up to ``timeout`` s for the first."""

    def ack(self, jobs: list[QueuedJob]) -> None:
        """The jobs are done (committed); the transport may forget them."""

    def reclaim_all(self) -> int:
        """Called by a worker that has just become the one worker: every message handed out and
        not acknowledged (by a dead worker, or by this one before it stepped down) is handed out
        again. Returns how many."""

    def depth(self) -> int:
        """Messages waiting (not yet handed out)."""

    def close(self) -> None:
        """Wake any waiting consumer and refuse further work."""


class InProcessQueue:
    """Job ids in id order, guarded by a condition variable (embedded mode: API and worker threads).

    A heap rather than a FIFO: jobs recovered from the DB at start-up are put after jobs the API
    already queued while the model was loading, and must still run in their (id) order.
    """

    def __init__(self) -> None:
        self._items: list[int] = []
        self._seen: set[int] = set()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job_id: int) -> None:
        self.put_many([job_id])

    def put_many(self, job_ids: list[int]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            for job_id in job_ids:
                if job_id in self._seen:  # re-enqueue on recovery must not duplicate
                    continue
                self._seen.add(job_id)
                heapq.heappush(self._items, job_id)
            self._cond.notify_all()

    def check(self) -> None:
        if self._closed:
            raise QueueUnavailable("the in-process queue is closed (shutting down)")

    def reconcile(self, pending: list[int]) -> list[int]:
        """Put the pending jobs this queue does not hold (it died with an earlier process)."""
        with self._cond:
            missing = [i for i in pending if i not in self._seen]
        self.put_many(missing)
        return missing

    def reclaim_all(self) -> int:
        """Hand out again every job that was handed out and never acknowledged (the worker
        stepped down mid-batch, e.g. the database went away, and is taking over again)."""
        with self._cond:
            queued = set(self._items)
            in_flight = [i for i in self._seen if i not in queued]
            for job_id in in_flight:
                heapq.heappush(self._items, job_id)
            self._cond.notify_all()
            return len(in_flight)

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            out: list[QueuedJob] = []
            while self._items and len(out) < max_items:
                out.append(QueuedJob(heapq.heappop(self._items)))
            return out

    def ack(self, jobs: list[QueuedJob]) -> None:
        with self._cond:
            for job in jobs:
                self._seen.discard(job.job_id)

    def depth(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class DatabaseQueue:
    """The ``jobs`` table itself as the queue: ``put`` is a no-op (the committed row is the message)
    and ``get_batch`` polls for pending rows in id order.

    This is what makes a multi-process deployment work without Redis: API replicas
    (``--no-worker``) commit jobs, the one worker process polls them. Latency is the poll interval;
    Redis Streams remove that latency and the polling load, and drop in behind the same protocol.
    """

    def __init__(self, sessions: "sessionmaker[Session]", poll_interval: float = 0.2) -> None:
        self.sessions = sessions
        self.poll_interval = poll_interval
        self._handed: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False

    def put(self, job_id: int) -> None:
        self._wake.set()  # same process: skip the rest of the poll interval

    def put_many(self, job_ids: list[int]) -> None:
        self._wake.set()

    def check(self) -> None:
        return None  # the committed row is the message: if the DB took it, the queue has it

    def reconcile(self, pending: list[int]) -> list[int]:
        return []  # nothing can be missing: the jobs table is the queue

    def _pending(self, limit: int) -> list[int]:
        from sqlalchemy import select

        from app.status import JobStatus
        from app.tables import Job

        with self.sessions() as s:
            query = select(Job.id).where(Job.status == JobStatus.PENDING).order_by(Job.id).limit(limit + len(self._handed))
            return [i for i in s.scalars(query) if i not in self._handed][:limit]

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                ids = self._pending(max_items)
                self._handed.update(ids)
            left = deadline - time.monotonic()
            if ids or left <= 0 or self._closed:
                return [QueuedJob(i) for i in ids]
            self._wake.wait(min(self.poll_interval, left))
            self._wake.clear()

    def ack(self, jobs: list[QueuedJob]) -> None:
        with self._lock:
            for job in jobs:
                self._handed.discard(job.job_id)

    def reclaim_all(self) -> int:
        """Forget what was handed out and never acknowledged, so pending rows are read again
        (the worker stepped down mid-batch and is taking over)."""
        with self._lock:
            n = len(self._handed)
            self._handed.clear()
        self._wake.set()
        return n

    def depth(self) -> int:
        from sqlalchemy import func, select

        from app.status import JobStatus
        from app.tables import Job

        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.PENDING)) or 0)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
