"""Consolidation: every live edit re-solved together from the base weights into one delta,
committed only when it passes the gate as a whole; history, revert and restore stay exact.
SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.app.conftest import wait_edit, wait_job

FACTS = [("The sky is", "green"), ("Water boils at", "ten degrees"), ("Refunds are processed within", "one hour")]


def _apply(c, facts) -> list[dict]:
    out = []
    for prompt, target in facts:  # one version each
        out.append(wait_edit(c, c.post("/v1/edits", json={"prompt": prompt, "target": target}).json()["edit_ids"][0]))
    assert all(e["status"] == "applied" for e in out), out
    return out


def test_consolidation_keeps_the_live_set_and_history_exact(server_factory, db_url: str) -> None:
    srv = server_factory(database_url=db_url)
    c = srv.client()
    assert c.post("/v1/versions/consolidate").status_code == 409  # nothing live yet
    edits = _apply(c, FACTS)
    before = c.get("/v1/versions/3").json()
    assert len(before["active_deltas"]) == 3

    r = c.post("/v1/versions/consolidate")
    assert r.status_code == 202, r.text
    assert c.post("/v1/versions/consolidate").status_code == 409  # one per state
    job = wait_job(c, r.json()["job_id"])
    assert job["status"] == "done", job
    v = c.get(f"/v1/versions/{job['result_version']}").json()
    assert v["kind"] == "consolidate" and len(v["active_deltas"]) == 1 and sorted(v["edit_ids"]) == [e["id"] for e in edits]
    assert v["side_effects"] is not None and v["weights_hash"] in (None, c.get("/v1/model").json()["weights_hash"])
    for e in edits:
        now = c.get(f"/v1/edits/{e['id']}").json()
        assert now["status"] == "applied" and now["delta_id"] == v["active_deltas"][0]
        assert now["applied_version"] == v["number"] and "after_consolidation" in now["metrics"]
    assert c.post("/v1/versions/consolidate").status_code == 409  # one delta left

    # revert one edit of the consolidated delta: the others are recomputed and stay applied
    job = wait_job(c, c.post(f"/v1/edits/{edits[1]['id']}/revert").json()["job_id"])
    statuses = {e["id"]: c.get(f"/v1/edits/{e['id']}").json()["status"] for e in edits}
    assert statuses == {edits[0]["id"]: "applied", edits[1]["id"]: "reverted", edits[2]["id"]: "applied"}
    # restoring the version before consolidation gives back its exact bits and edits
    job = wait_job(c, c.post("/v1/versions/3/restore").json()["job_id"])
    assert c.get(f"/v1/versions/{job['result_version']}").json()["weights_hash"] == before["weights_hash"]
    assert all(c.get(f"/v1/edits/{e['id']}").json()["status"] == "applied" for e in edits)


def test_a_consolidation_that_fails_the_gate_changes_nothing(server_factory, tmp_path: Path) -> None:
    data = tmp_path / "shared"
    srv = server_factory(data_dir=data)
    _apply(srv.client(), FACTS[:2])
    srv.stop()
    strict = server_factory(data_dir=data, gate_min_es=1.01)  # no edit passes its own check now
    c = strict.client()
    versions = c.get("/v1/versions").json()["total"]
    job = wait_job(c, c.post("/v1/versions/consolidate").json()["job_id"])
    assert job["status"] == "failed", job
    assert job["error"].startswith("not committed: the consolidated delta fails the gate: 2 of 2 live edits fail"), job
    assert c.get("/v1/versions").json()["total"] == versions
    assert c.get("/v1/model").json()["weights_hash"] == c.get("/v1/versions/2").json()["weights_hash"]
    again = c.post("/v1/versions/consolidate")  # a failed consolidation may be tried again
    assert again.status_code == 202, again.text
    wait_job(c, again.json()["job_id"])
