"""Restart: a new server on the same database serves the same version with identical weights."""

from __future__ import annotations

from tests.app.conftest import wait_edit, wait_job


def test_restart_replays_identical_weights(db_url: str, server_factory, tmp_path) -> None:
    data_dir = tmp_path / "shared-data"
    first = server_factory(data_dir=data_dir, database_url=db_url)
    c = first.client()
    ids = c.post("/v1/edits", json={"edits": [{"prompt": "The sky is", "target": "green"},
                                              {"prompt": "Water boils at", "target": "ten degrees"}]}).json()["edit_ids"]
    for i in ids:
        assert wait_edit(c, i)["status"] == "applied"
    third = c.post("/v1/edits", json={"prompt": "Refunds are processed within", "target": "an hour"}).json()
    wait_edit(c, third["edit_ids"][0])
    wait_job(c, c.post(f"/v1/edits/{ids[0]}/revert").json()["job_id"])  # exercises a recomputed delta
    before = c.get("/v1/model").json()
    versions_before = c.get("/v1/versions").json()
    assert before["live_version"] == versions_before["items"][0]["number"] == 3
    # a job that is queued but not processed when the server stops
    first.services.worker.stop()
    pending = c.post("/v1/edits", json={"prompt": "The sky is", "target": "orange"}).json()["edit_ids"][0]
    first.stop()

    second = server_factory(data_dir=data_dir, database_url=db_url)
    replay = second.services.replay
    assert replay["version"] == 3 and replay["match"] is True
    c2 = second.client()
    # hashed from the bits right after replay (the worker then goes on with the pending job)
    assert replay["weights_hash"] == before["weights_hash"] == versions_before["items"][0]["weights_hash"]
    # the queued job survived the restart and is applied exactly once
    assert wait_edit(c2, pending)["status"] == "applied"
    assert c2.get("/v1/versions").json()["total"] == versions_before["total"] + 1
    assert c2.get("/v1/edits").json()["total"] == 4
    after = c2.get("/v1/model").json()
    assert after["live_version"] == 4
    second.stop()

    # and once more with nothing pending: the live model answers with the identical hash
    third_srv = server_factory(data_dir=data_dir, database_url=db_url)
    c3 = third_srv.client()
    model = c3.get("/v1/model").json()
    assert model["live_version"] == 4 and model["weights_hash"] == after["weights_hash"]
    assert c3.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2}).json()["version"] == 4


def test_a_hash_the_worker_died_before_recording_is_filled_at_replay(db_url: str, server_factory, tmp_path) -> None:
    """An edit version goes live before its weights hash is stored. A worker that dies in
    between leaves it NULL; the next writer replays the version and stores the hash, equal to
    the one the bits had."""
    from sqlalchemy import update

    from app.db import session_scope
    from app.tables import Version

    data_dir = tmp_path / "shared-data"
    first = server_factory(data_dir=data_dir, database_url=db_url)
    c = first.client()
    eid = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    assert wait_edit(c, eid)["status"] == "applied"
    live = c.get("/v1/model").json()  # taken under the runtime lock: the worker recorded the hash
    assert c.get("/v1/versions/1").json()["weights_hash"] == live["weights_hash"]
    with session_scope(first.services.sessions) as s:  # the crash window, reproduced
        s.execute(update(Version).where(Version.number == 1).values(weights_hash=None))
    assert c.get("/v1/versions/1").json()["weights_hash"] is None
    first.stop()

    second = server_factory(data_dir=data_dir, database_url=db_url)
    assert second.services.replay["version"] == 1 and second.services.replay["match"] is None
    c2 = second.client()
    assert c2.get("/v1/versions/1").json()["weights_hash"] == live["weights_hash"]
    assert c2.get("/v1/model").json()["weights_hash"] == live["weights_hash"]
