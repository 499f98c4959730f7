"""Queue transports: order, de-duplication, closing; the DB-backed queue on SQLite and Postgres."""

from __future__ import annotations

import threading
import time

from app import repository as repo
from app.db import make_engine, make_sessionmaker, session_scope, upgrade_to_head
from app.queue import DatabaseQueue, InProcessQueue, Queue


def test_in_process_queue_orders_and_dedups() -> None:
    q = InProcessQueue()
    assert isinstance(q, Queue)
    for i in (5, 6, 1, 2, 5):
        q.put(i)
    assert q.depth() == 4
    batch = q.get_batch(3, timeout=0)
    assert [j.job_id for j in batch] == [1, 2, 5]
    q.put(1)  # handed out but not acked: not queued again
    assert [j.job_id for j in q.get_batch(10, timeout=0)] == [6]
    q.ack(batch)
    q.put(1)  # acked: a redelivery is accepted (the worker skips it by status)
    assert [j.job_id for j in q.get_batch(10, timeout=0)] == [1]


def test_in_process_queue_reclaims_what_was_handed_out_and_not_acked() -> None:
    """A worker that stepped down mid-batch gets its unacknowledged jobs again on taking over."""
    q = InProcessQueue()
    q.put_many([1, 2, 3])
    handed = q.get_batch(2, timeout=0)
    q.ack(handed[:1])
    assert q.reclaim_all() == 1
    assert [j.job_id for j in q.get_batch(10, timeout=0)] == [2, 3]
    assert q.reclaim_all() == 2 and q.depth() == 2


def test_in_process_queue_wakes_waiter_and_closes() -> None:
    q = InProcessQueue()
    got: list[int] = []
    t = threading.Thread(target=lambda: got.extend(j.job_id for j in q.get_batch(5, timeout=10)))
    t.start()
    time.sleep(0.05)
    q.put(7)
    t.join(5)
    assert got == [7]
    t0 = time.monotonic()
    q.close()
    assert q.get_batch(5, timeout=5) == [] and time.monotonic() - t0 < 1


def test_database_queue(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    sessions = make_sessionmaker(engine)
    q = DatabaseQueue(sessions, poll_interval=0.05)
    with session_scope(sessions) as s:
        _, jobs = repo.create_edits(s, [repo.NewEdit("a", "b", [], [])] * 3, None, None, None)
        ids = [j.id for j in jobs]
    assert q.depth() == 3
    first = q.get_batch(2, timeout=0)
    assert [j.job_id for j in first] == ids[:2]
    assert [j.job_id for j in q.get_batch(5, timeout=0)] == ids[2:]  # handed-out jobs are not repeated
    assert q.get_batch(5, timeout=0.1) == []
    with session_scope(sessions) as s:
        repo.get_job(s, ids[0]).status = "done"
    q.ack(first)
    assert [j.job_id for j in q.get_batch(5, timeout=0)] == [ids[1]]  # still pending: redelivered
    assert q.get_batch(5, timeout=0) == []
    assert q.reclaim_all() == 2  # ids[1] and ids[2], handed out and never acked
    assert [j.job_id for j in q.get_batch(5, timeout=0)] == ids[1:]
    engine.dispose()
