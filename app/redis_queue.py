"""The production job queue: Redis Streams with a consumer group (``XREADGROUP`` for
``get_batch``, ``XACK`` for ``ack``, ``XAUTOCLAIM`` of entries a crashed worker left pending).
The contract it meets is ``app.queue.Queue``."""

from __future__ import annotations

from app.queue import QueuedJob, QueueUnavailable


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
