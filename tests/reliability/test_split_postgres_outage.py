"""PostgreSQL goes down under the split topology (API replica + worker on Redis) with edits both
queued and running, and comes back: nothing is lost, failed or applied twice.

The worker and the replica are real uvicorn servers (threads of this process) on the shared Redis
(a prefix of their own) and on PostgreSQL through a TCP proxy that the test cuts. While it is cut:
submissions and reads get 503 naming the database, both ``/readyz`` say why. The edit the worker
was computing cannot be committed; it must not end ``failed`` (an outage is not the edit's fault):
the worker steps down, and its next take-over puts the job back and runs it again.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from tests.app.test_production_faults import TcpProxy
from tests.app.conftest import redis_available

REDIS_URL = "redis://127.0.0.1:6379/0"


def test_postgres_down_with_edits_queued_and_running(pg_url: str, server_factory, tmp_path: Path) -> None:
    import redis

    assert redis_available(), "Redis at 127.0.0.1:6379 is not reachable (.ci/run starts it)"
    prefix = f"pgdown_{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    servers = []
    try:
        common = dict(data_dir=tmp_path / "d", database_url=url, redis_url=REDIS_URL, redis_prefix=prefix,
                      worker_batch_size=1, leader_check_interval_s=0.5, requeue_interval_s=1.0,
                      requeue_grace_s=0.2, follow_interval_s=1.0)
        worker = server_factory(**common, role="worker")
        servers.append(worker)
        replica = server_factory(**common, role="api")
        servers.insert(0, replica)
        c = replica.client(timeout=30)
        ids = [c.post("/v1/edits", json={"prompt": f"Unit {i} ships from", "target": f"dock {i}"}).json()["edit_ids"][0]
               for i in range(16)]
        deadline = time.monotonic() + 60
        while True:  # cut while one edit is running and later ones are still queued
            statuses = Counter(e["status"] for e in c.get("/v1/edits", params={"limit": 100}).json()["items"])
            if statuses["running"] and statuses["queued"]:
                break
            assert statuses["queued"] + statuses["running"], f"all decided before the cut: {statuses}"
            assert time.monotonic() < deadline, statuses
        proxy.cut()
        print(f"cut with {dict(statuses)}")
        r = c.post("/v1/edits", json={"prompt": "Unit 99 ships from", "target": "dock 99"})
        assert r.status_code == 503 and r.json()["dependency"] == "database", r.text
        assert c.get(f"/v1/edits/{ids[0]}").status_code == 503
        for srv in (worker, replica):
            ready = httpx.get(f"{srv.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["database"].startswith("unavailable"), ready.text
        time.sleep(2.0)  # the worker finds its commit and its lock gone and steps down
        proxy.start()
        deadline = time.monotonic() + 60
        while True:
            r = c.get("/v1/edits", params={"limit": 100})
            if r.status_code == 200 and all(e["status"] not in ("queued", "running") for e in r.json()["items"]):
                break
            assert r.status_code in (200, 503), r.text
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        edits = {e["id"]: e for e in r.json()["items"]}
        assert sorted(edits) == sorted(ids)  # the refused submission stored nothing
        assert all(e["status"] == "applied" for e in edits.values()), [(e["id"], e["status"], e["error"])
                                                                       for e in edits.values()]
        versions = c.get("/v1/versions", params={"limit": 100}).json()["items"]
        assert sorted(v["number"] for v in versions) == list(range(len(versions)))
        committed: Counter[int] = Counter()
        for v in versions:
            if v["kind"] == "edit":
                committed.update(v["edit_ids"])
        assert all(committed[i] == 1 for i in ids), committed  # each edit in exactly one version
        assert worker.services.worker.leader_terms >= 2  # stepped down and took the lock again
        top = max(v["number"] for v in versions)
        g = c.post("/v1/generate", json={"prompt": "x", "max_tokens": 1, "min_version": top, "wait_s": 20})
        assert g.status_code == 200 and g.json()["version"] == top, g.text
        stored = c.get(f"/v1/versions/{top}").json()["weights_hash"]
        worker_hash = httpx.get(f"{worker.url}/readyz", timeout=10).json()["weights_hash"]
        assert c.get("/v1/model").json()["weights_hash"] == worker_hash == stored
    finally:
        for srv in servers:
            if srv.thread.is_alive():
                srv.stop()  # before their stream goes
        proxy.cut()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"{prefix}:jobs")
        client.close()
