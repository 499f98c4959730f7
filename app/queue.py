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


class RedisStreamQueue:
    """Redis Streams with a consumer group: at-least-once, crash-safe, rebuilt from the DB.

    - ``put_many`` appends all of a submission's jobs in one MULTI/EXEC, so the worker reads them
      as one micro-batch.
    - ``get_batch`` returns first the entries taken over from dead consumers (``reclaim_all``, at
      leadership change), then entries any consumer left unacknowledged for ``claim_idle_s``
      (``XAUTOCLAIM``), then new ones (``XREADGROUP``).
    - ``ack`` (``XACK`` + ``XDEL``) is called only after the job's outcome is committed.
    - Redis may lose everything (no persistence, or a restart): a missing group is recreated
      (``NOGROUP`` -> ``XGROUP CREATE ... MKSTREAM``) and ``reset`` is raised, and ``reconcile``
      re-appends every job the database still has pending but the stream does not hold.

    Duplicates are harmless: the worker skips any job whose DB row is no longer pending.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "smedit",
        consumer: str | None = None,
        claim_idle_s: float = 60.0,
        timeout_s: float = 5.0,
    ) -> None:
        import os
        import socket

        import redis

        self._redis_mod = redis
        self.redis = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s + 2.0, health_check_interval=30,
            retry_on_timeout=False,
        )
        self.stream = f"{prefix}:jobs"
        self.group = f"{prefix}:workers"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._closed = False
        self._backlog: list[QueuedJob] = []
        self._group_ready = False
        self.reset = True  # the worker reconciles with the DB on its first step
        try:
            self._ensure_group()
        except redis.ConnectionError:
            pass  # created on first use; the API answers 503 until Redis is reachable

    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._redis_mod.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _unavailable(self, exc: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"job queue (Redis) unavailable: {type(exc).__name__}: {exc}")

    def check(self) -> None:
        try:
            self.redis.ping()
        except self._redis_mod.RedisError as exc:
            raise self._unavailable(exc) from None

    def put(self, job_id: int) -> None:
        self.put_many([job_id])

    def put_many(self, job_ids: list[int]) -> None:
        if not job_ids:
            return
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                for job_id in job_ids:
                    pipe.xadd(self.stream, {"job_id": str(job_id)})
                pipe.execute()
        except self._redis_mod.RedisError as exc:
            raise self._unavailable(exc) from None

    @staticmethod
    def _jobs(entries: list) -> list[QueuedJob]:
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted entry
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append(QueuedJob(int(fields[b"job_id"]), receipt=eid))
        return out

    def _is_nogroup(self, exc: Exception) -> bool:
        return isinstance(exc, self._redis_mod.ResponseError) and "NOGROUP" in str(exc)

    def get_batch(self, max_items: int, timeout: float) -> list[QueuedJob]:
        if self._closed:
            return []
        try:
            if not self._group_ready:
                self._ensure_group()
                self.reset = True
            jobs = self._backlog[:max_items]
            self._backlog = self._backlog[max_items:]
            if len(jobs) < max_items:
                claimed = self.redis.xautoclaim(
                    self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0",
                    count=max_items - len(jobs),
                )
                jobs += self._jobs(claimed[1])
            if len(jobs) < max_items:
                block = int(timeout * 1000) if not jobs and timeout > 0 else None
                read = self.redis.xreadgroup(
                    self.group, self.consumer, {self.stream: ">"}, count=max_items - len(jobs), block=block
                )
                for _, entries in read or []:
                    jobs += self._jobs(entries)
        except self._redis_mod.ResponseError as exc:
            if not self._is_nogroup(exc):
                raise
            # Redis lost the stream (restart without persistence): recreate, then the worker
            # re-enqueues from the database what is still pending.
            self._group_ready = False
            return []
        except self._redis_mod.ConnectionError:
            self._group_ready = False  # after reconnecting, make sure the group still exists
            raise
        return sorted(jobs, key=lambda j: j.job_id)

    def reclaim_all(self) -> int:
        """Take over every entry any consumer has pending (the caller just became the one worker,
        so their owners are dead or fenced off); ``get_batch`` hands them out first."""
        if not self._group_ready:
            self._ensure_group()
        taken: list[QueuedJob] = []
        start = "0-0"
        while True:
            nxt, entries, *_ = self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=0, start_id=start, count=500
            )
            taken += self._jobs(entries)
            nxt = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
            if nxt in ("0-0", "0"):
                break
            start = nxt
        known = {j.receipt for j in self._backlog}
        self._backlog = sorted(self._backlog + [j for j in taken if j.receipt not in known], key=lambda j: j.job_id)
        # forget consumers that own nothing any more (dead workers), so XINFO stays readable
        try:
            for info in self.redis.xinfo_consumers(self.stream, self.group):
                name = info.get("name")
                name = name.decode() if isinstance(name, bytes) else name
                if name != self.consumer and int(info.get("pending", 0)) == 0:
                    self.redis.xgroup_delconsumer(self.stream, self.group, name)
        except self._redis_mod.ResponseError:
            pass
        return len(taken)

    def job_ids_in_stream(self) -> set[int]:
        """Job ids of every entry still in the stream (new or pending: acked ones are deleted)."""
        out: set[int] = set()
        start = "-"
        while True:
            entries = self.redis.xrange(self.stream, min=start, max="+", count=1000)
            for job in self._jobs(entries):
                out.add(job.job_id)
            if len(entries) < 1000:
                return out
            last = entries[-1][0]
            last = last.decode() if isinstance(last, bytes) else str(last)
            start = "(" + last

    def reconcile(self, pending: list[int]) -> list[int]:
        """Append the pending jobs (ids from the DB) the stream does not hold; return them."""
        if not self._group_ready:
            self._ensure_group()
        present = self.job_ids_in_stream() | {j.job_id for j in self._backlog}
        missing = [i for i in pending if i not in present]
        self.put_many(missing)
        self.reset = False
        return missing

    def ack(self, jobs: list[QueuedJob]) -> None:
        receipts = [j.receipt for j in jobs if j.receipt]
        if receipts:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, *receipts)
                pipe.xdel(self.stream, *receipts)
                pipe.execute()

    def depth(self) -> int:
        for info in self.redis.xinfo_groups(self.stream):
            if info.get("name") in (self.group, self.group.encode()):
                lag = info.get("lag")
                return int(lag) if lag is not None else int(self.redis.xlen(self.stream))
        return 0

    def close(self) -> None:
        self._closed = True
        self.redis.close()
