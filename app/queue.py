"""The job queue between the API (producers) and the single worker (consumer).

The queue only transports job ids; the job itself (kind, edit, target version, status) lives in
the database, which stays the source of truth. That makes any transport at-least-once safe: the
worker skips a job whose row is no longer ``pending``, so a redelivered message never applies an
edit twice, and a lost in-process queue is rebuilt from the ``jobs`` table on start.

``InProcessQueue`` serves embedded mode (SQLite). ``DatabaseQueue`` polls the ``jobs`` table, for
a shared database with separate API / worker processes and no Redis. ``RedisStreamQueue`` is the
production transport (consumer group; ``XREADGROUP`` for ``get_batch``, ``XACK`` for ``ack``,
``XAUTOCLAIM`` of entries a crashed worker left pending).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


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

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        """Up to ``max_items`` messages in FIFO order; waits up to ``timeout`` s for the first."""

    def ack(self, jobs: list[QueuedJob]) -> None:
        """The jobs are done (committed); the transport may forget them."""

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
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            if job_id in self._seen:  # re-enqueue on recovery must not duplicate
                return
            self._seen.add(job_id)
            heapq.heappush(self._items, job_id)
            self._cond.notify_all()

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

    def _pending(self, limit: int) -> list[int]:
        from sqlalchemy import select

        from app.models import Job

        with self.sessions() as s:
            query = select(Job.id).where(Job.status == "pending").order_by(Job.id).limit(limit + len(self._handed))
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

    def depth(self) -> int:
        from sqlalchemy import func, select

        from app.models import Job

        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(Job.status == "pending")) or 0)

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class RedisStreamQueue:
    """Redis Streams with a consumer group: durable, at-least-once, crash-safe.

    ``get_batch`` first reclaims entries another consumer took but never acknowledged for
    ``claim_idle_s`` (a crashed worker), then reads new ones. Duplicates are harmless: the worker
    skips any job whose DB row is no longer pending.
    """

    def __init__(self, url: str, prefix: str = "smedit", consumer: str | None = None, claim_idle_s: float = 60.0) -> None:
        import os
        import socket

        import redis

        self.redis = redis.Redis.from_url(url)
        self.stream = f"{prefix}:jobs"
        self.group = f"{prefix}:workers"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._closed = False
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def put(self, job_id: int) -> None:
        self.redis.xadd(self.stream, {"job_id": str(job_id)})

    @staticmethod
    def _jobs(entries: list) -> list[QueuedJob]:
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted entry
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append(QueuedJob(int(fields[b"job_id"]), receipt=eid))
        return out

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        if self._closed:
            return []
        claimed = self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=max_items
        )
        jobs = self._jobs(claimed[1])
        if len(jobs) < max_items:
            block = int(timeout * 1000) if not jobs and timeout > 0 else None
            read = self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=max_items - len(jobs), block=block
            )
            for _, entries in read or []:
                jobs += self._jobs(entries)
        return sorted(jobs, key=lambda j: j.job_id)

    def ack(self, jobs: list[QueuedJob]) -> None:
        receipts = [j.receipt for j in jobs if j.receipt]
        if receipts:
            self.redis.xack(self.stream, self.group, *receipts)
            self.redis.xdel(self.stream, *receipts)

    def depth(self) -> int:
        for info in self.redis.xinfo_groups(self.stream):
            if info.get("name") in (self.group, self.group.encode()):
                lag = info.get("lag")
                return int(lag) if lag is not None else int(self.redis.xlen(self.stream))
        return 0

    def close(self) -> None:
        self._closed = True
        self.redis.close()
