"""The Redis Streams transport against the real Redis (6379): atomic submissions, take-over of a
dead consumer's entries, re-enqueue of what the stream lost, recovery of a vanished group."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.queue import QueueUnavailable
from app.redis_queue import RedisStreamQueue
from tests.app.conftest import redis_available

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    if not redis_available():
        pytest.fail("Redis at 127.0.0.1:6379 is not reachable (.ci/run starts it)")
    p = f"smedit-q-{uuid.uuid4().hex[:8]}"
    yield p
    import redis

    r = redis.Redis.from_url(URL)
    r.delete(f"{p}:jobs")
    r.close()


def test_submission_is_one_batch_and_ack_deletes(prefix: str) -> None:
    q = RedisStreamQueue(URL, prefix=prefix, consumer="w1")
    q.put_many([3, 1, 2])
    assert q.depth() == 3
    batch = q.get_batch(10, timeout=0.1)
    assert [j.job_id for j in batch] == [1, 2, 3]
    q.ack(batch)
    assert q.redis.xlen(q.stream) == 0
    assert q.get_batch(10, timeout=0.05) == []
    q.close()


def test_take_over_a_dead_consumer(prefix: str) -> None:
    dead = RedisStreamQueue(URL, prefix=prefix, consumer="dead")
    dead.put_many([10, 11])
    assert len(dead.get_batch(10, timeout=0.1)) == 2  # read, never acknowledged: the worker died
    heir = RedisStreamQueue(URL, prefix=prefix, consumer="heir", claim_idle_s=3600)
    assert heir.get_batch(10, timeout=0.05) == []  # not idle long enough for normal reclaiming
    assert heir.reclaim_all() == 2  # a new leader takes everything over at once
    batch = heir.get_batch(10, timeout=0)
    assert [j.job_id for j in batch] == [10, 11]
    heir.ack(batch)
    names = {c["name"] for c in heir.redis.xinfo_consumers(heir.stream, heir.group)}
    assert b"dead" not in names and "dead" not in names
    dead.close()
    heir.close()


def test_reconcile_and_lost_stream(prefix: str) -> None:
    q = RedisStreamQueue(URL, prefix=prefix, consumer="w")
    q.put_many([1, 2])
    assert q.reconcile([1, 2, 3, 4]) == [3, 4]  # 1, 2 are in the stream already
    assert q.reconcile([1, 2, 3, 4]) == []
    batch = q.get_batch(10, timeout=0.1)
    assert [j.job_id for j in batch] == [1, 2, 3, 4]
    q.redis.delete(q.stream)  # Redis restarted without persistence: stream and group are gone
    assert q.get_batch(10, timeout=0.05) == []  # NOGROUP -> group recreated on the next call
    assert q.get_batch(10, timeout=0.05) == [] and q.reset  # the worker must sweep now
    assert q.reconcile([4]) == [4] and not q.reset
    assert [j.job_id for j in q.get_batch(10, timeout=0.1)] == [4]
    q.close()


def test_unreachable_redis_is_queue_unavailable() -> None:
    q = RedisStreamQueue("redis://127.0.0.1:1/0", prefix="nowhere", timeout_s=0.5)
    with pytest.raises(QueueUnavailable, match="Redis"):
        q.check()
    with pytest.raises(QueueUnavailable):
        q.put_many([1])
    q.close()
