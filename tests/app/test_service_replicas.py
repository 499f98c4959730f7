"""Production shape: an API replica without a worker + one worker process, sharing a database.

Both run in this test process but share nothing except the database: the replica commits jobs,
the worker polls them (DatabaseQueue), and the replica's PollingFollower picks up new versions.
"""

from __future__ import annotations

import threading
import time

import uvicorn

from app.main import create_app
from tests.app.conftest import RunningServer, free_port, make_settings, wait_edit


def test_replica_follows_the_worker(db_url: str, transport: dict, server_factory, tmp_path) -> None:
    common = dict(data_dir=tmp_path / "d", database_url=db_url, **transport)
    worker = server_factory(**common)
    replica = server_factory(**common, run_worker=False)
    assert replica.services.worker is None
    # the shared queue's depth comes from the worker only, so sum() over processes counts it once
    assert "\nsmedit_queue_depth " in worker.client().get("/metrics").text
    assert "\nsmedit_queue_depth " not in replica.client().get("/metrics").text
    r = replica.client()
    sub = r.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()
    edit = wait_edit(r, sub["edit_ids"][0])
    assert edit["status"] == "applied" and edit["applied_version"] == 1
    g = r.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2, "min_version": 1, "wait_s": 10})
    assert g.status_code == 200 and g.json()["version"] == 1
    assert r.get("/v1/model").json()["weights_hash"] == worker.client().get("/v1/model").json()["weights_hash"]
    # a revert requested on the replica is executed by the worker and followed by the replica
    job = r.post(f"/v1/edits/{edit['id']}/revert").json()
    g = r.post("/v1/probe", json={"prompt": "The sky is", "target": "green", "min_version": 2, "wait_s": 10})
    assert g.status_code == 200 and g.json()["version"] == 2
    assert r.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done"
    assert r.get("/v1/model").json()["weights_hash"] == r.get("/v1/versions/0").json()["weights_hash"]


def test_second_worker_is_a_standby(pg_url: str, server_factory, tmp_path) -> None:
    """On PostgreSQL an advisory lock keeps one worker; the other takes over when it stops."""
    common = dict(data_dir=tmp_path / "d", database_url=pg_url, queue="db")
    leader = server_factory(**common)
    # the standby never becomes ready while the leader lives, so start it without waiting
    port = free_port()
    app = create_app(make_settings(leader.services.settings.model_dir, tmp_path / "d",
                                   database_url=pg_url, queue="db"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    standby = RunningServer(f"http://127.0.0.1:{port}", server, thread, app)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            svc = getattr(app.state, "services", None)
            if svc is not None and svc.worker is not None and svc.worker.lock.waited:
                break
            time.sleep(0.1)
        assert standby.services.worker.running is False
        c = leader.client()
        e = wait_edit(c, c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0])
        assert e["status"] == "applied" and e["applied_version"] == 1
        # the standby's model follows the committed versions while it waits
        g = standby.client().post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2,
                                                        "min_version": 1, "wait_s": 10})
        assert g.status_code == 200 and g.json()["version"] == 1
        leader.stop()
        deadline = time.monotonic() + 30
        while not standby.services.worker.running and time.monotonic() < deadline:
            time.sleep(0.1)
        s = standby.client()
        assert s.get("/readyz").status_code == 200
        e2 = wait_edit(s, s.post("/v1/edits", json={"prompt": "Water boils at", "target": "ten"}).json()["edit_ids"][0])
        assert e2["status"] == "applied" and e2["applied_version"] == 2
        assert s.get("/v1/model").json()["live_version"] == 2
    finally:
        standby.stop()
