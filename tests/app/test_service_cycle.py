"""The full life of edits over HTTP against a real server: edit, generate, revert, restore."""

from __future__ import annotations

import httpx

from tests.app.conftest import RunningServer, wait_edit, wait_job


def _hash(c: httpx.Client) -> str:
    return c.get("/v1/model").json()["weights_hash"]


def _version(c: httpx.Client, n: int) -> dict:
    r = c.get(f"/v1/versions/{n}")
    assert r.status_code == 200, r.text
    return r.json()


def test_edit_generate_revert_restore_cycle(server: RunningServer) -> None:
    c = server.client()
    h0 = _hash(c)
    assert _version(c, 0)["weights_hash"] == h0

    # one fact -> version 1
    r = c.post("/v1/edits", json={"prompt": "The capital of France is", "target": "Rome",
                                  "paraphrases": ["France's capital city is"], "author": "alice", "reason": "test"})
    assert r.status_code == 202, r.text
    sub = r.json()
    assert sub["status_url"].endswith(f"/v1/edits/{sub['edit_ids'][0]}")
    a = wait_edit(c, sub["edit_ids"][0])
    assert a["status"] == "applied", a
    assert a["applied_version"] == 1 and a["author"] == "alice"
    for key in ("es", "gs", "canary_changed"):
        assert key in a["metrics"]
    assert a["metrics"]["gate_s"] > 0 and a["metrics"]["compute_s"] > 0  # where the worker's time went
    assert a["timings"]["total_s"] is not None
    h1 = _hash(c)
    assert h1 != h0, "an applied edit must change the weights"
    assert _version(c, 1)["weights_hash"] == h1

    # inference names the version it ran on
    g = c.post("/v1/generate", json={"prompt": "The capital of France is", "max_tokens": 4, "min_version": 1})
    assert g.status_code == 200, g.text
    assert g.json()["version"] == 1
    p = c.post("/v1/probe", json={"prompt": "The capital of France is", "target": "Rome"})
    assert p.status_code == 200, p.text
    body = p.json()
    assert body["version"] == 1 and 0.0 <= body["probability"] <= 1.0 and body["rank"] >= 1

    # a batch of two facts -> one delta, version 2
    r = c.post("/v1/edits", json={"edits": [
        {"prompt": "The Zentrix X2 costs", "target": "99 dollars"},
        {"prompt": "Water boils at", "target": "fifty degrees", "locality": [{"prompt": "The sky is"}]},
    ]})
    assert r.status_code == 202, r.text
    b_id, c_id = r.json()["edit_ids"]
    b, cc = wait_edit(c, b_id), wait_edit(c, c_id)
    assert b["status"] == cc["status"] == "applied"
    assert b["delta_id"] == cc["delta_id"] and b["applied_version"] == cc["applied_version"] == 2
    assert cc["metrics"]["locality"] is not None
    h2 = _hash(c)
    assert h2 not in (h0, h1)

    # revert b: its batch delta is dropped, c is recomputed into a new delta (same new version)
    r = c.post(f"/v1/edits/{b_id}/revert")
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["job_id"])
    assert job["status"] == "done" and job["result_version"] == 3, job
    b, cc = c.get(f"/v1/edits/{b_id}").json(), c.get(f"/v1/edits/{c_id}").json()
    assert b["status"] == "reverted" and b["reverted_version"] == 3
    assert cc["status"] == "applied" and cc["applied_version"] == 3 and cc["delta_id"] != b["delta_id"]
    v3 = _version(c, 3)
    assert v3["kind"] == "revert" and v3["active_deltas"] == [a["delta_id"], cc["delta_id"]]
    assert _hash(c) == v3["weights_hash"]

    # reverting it again is refused up front
    assert c.post(f"/v1/edits/{b_id}/revert").status_code == 409

    # restore version 1: bit-identical weights to when 1 was live
    r = c.post("/v1/versions/1/restore")
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["job_id"])
    assert job["status"] == "done" and job["result_version"] == 4
    assert _hash(c) == h1
    v4 = _version(c, 4)
    assert v4["kind"] == "restore" and v4["weights_hash"] == h1 and v4["live"]
    assert c.get(f"/v1/edits/{c_id}").json()["status"] == "reverted"
    assert c.get(f"/v1/edits/{a['id']}").json()["status"] == "applied"

    # restore version 2 brings b and c back exactly
    job = wait_job(c, c.post("/v1/versions/2/restore").json()["job_id"])
    assert job["result_version"] == 5 and _hash(c) == h2
    assert c.get(f"/v1/edits/{b_id}").json()["status"] == "applied"
    assert c.get(f"/v1/edits/{c_id}").json()["status"] == "applied"

    # and version 0 is the base model
    job = wait_job(c, c.post("/v1/versions/0/restore").json()["job_id"])
    assert _hash(c) == h0
    g = c.post("/v1/generate", json={"prompt": "Water boils at", "max_tokens": 3, "min_version": job["result_version"]})
    assert g.json()["version"] == job["result_version"]

    # history: paging and filters
    page = c.get("/v1/edits", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["items"][0]["id"] == c_id
    assert [e["id"] for e in c.get("/v1/edits", params={"author": "alice"}).json()["items"]] == [a["id"]]
    assert [e["id"] for e in c.get("/v1/edits", params={"q": "zentrix"}).json()["items"]] == [b_id]
    assert c.get("/v1/edits", params={"status": "reverted"}).json()["total"] == 3
    versions = c.get("/v1/versions", params={"kind": "restore"}).json()
    assert versions["total"] == 3
    assert c.get("/v1/versions", params={"q": "restore version 1"}).json()["total"] == 1
    assert c.get("/v1/versions", params={"since": "2000-01-01T00:00:00Z", "limit": 1}).json()["total"] == 7

    # metrics are exported
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("smedit_edits_total", "smedit_queue_depth", "smedit_edit_latency_seconds_bucket",
                 "smedit_versions_created_total", "smedit_inference_seconds_bucket", "smedit_live_version"):
        assert name in text, name


def test_idempotency_key(server: RunningServer) -> None:
    c = server.client()
    body = {"prompt": "Our support line opens at", "target": "ten", "idempotency_key": "req-42"}
    first = c.post("/v1/edits", json=body)
    second = c.post("/v1/edits", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["edit_ids"] == second.json()["edit_ids"]
    assert second.json()["duplicate"] is True
    # the header works too, and reusing a key for another request is a conflict
    third = c.post("/v1/edits", json={"prompt": "Our support line opens at", "target": "ten"},
                   headers={"Idempotency-Key": "req-42"})
    assert third.status_code == 202 and third.json()["edit_ids"] == first.json()["edit_ids"]
    clash = c.post("/v1/edits", json={**body, "target": "eleven"})
    assert clash.status_code == 409
    wait_edit(c, first.json()["edit_ids"][0])
    assert c.get("/v1/edits").json()["total"] == 1
    assert c.get("/v1/versions").json()["total"] == 2  # base + exactly one edit version


def test_min_version_conflict_and_timeout(server: RunningServer) -> None:
    c = server.client()
    r = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2, "min_version": 50})
    assert r.status_code == 409 and "does not exist" in r.json()["detail"]
    server.services.worker.stop()  # nothing will be applied now
    sub = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"})
    assert sub.status_code == 202
    r = c.post("/v1/probe", json={"prompt": "The sky is", "target": "green", "min_version": 1, "wait_s": 0.3})
    assert r.status_code == 504 and "not live" in r.json()["detail"]
    # a long poll on an edit nobody will process answers "queued" when its wait is over
    pending = c.get(f"/v1/edits/{sub.json()['edit_ids'][0]}", params={"wait_s": 0.3})
    assert pending.status_code == 200 and pending.json()["status"] == "queued"
    assert c.get(f"/v1/edits/{sub.json()['edit_ids'][0]}", params={"wait_s": 31}).status_code == 422


def test_long_poll_answers_once_the_edit_is_decided(server: RunningServer) -> None:
    c = server.client()
    ids = []
    for target in ("blue", "grey", "red"):
        ids += c.post("/v1/edits", json={"prompt": "The sky is", "target": target}).json()["edit_ids"]
    for edit_id in ids:  # one call each: the server holds it until the worker decided the edit
        body = c.get(f"/v1/edits/{edit_id}", params={"wait_s": 30}).json()
        assert body["status"] not in ("queued", "running"), body


def test_request_id_and_health(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc-123"
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] and ready["model_loaded"] and ready["version_replayed"] and ready["worker_running"]
    assert ready["live_version"] == 0


def test_bf16_weights_restore_bit_identical(server_factory) -> None:
    """bf16 models (the GPU default) stay exact: states are rebuilt from fp32 masters."""
    srv = server_factory(dtype="bfloat16")
    c = srv.client()
    assert c.get("/v1/model").json()["dtype"] == "bfloat16"
    h0 = _hash(c)
    for i, (prompt, target) in enumerate([("The sky is", "green"), ("Water boils at", "red")], start=1):
        e = wait_edit(c, c.post("/v1/edits", json={"prompt": prompt, "target": target}).json()["edit_ids"][0])
        assert e["status"] == "applied" and e["applied_version"] == i
    h2 = _hash(c)
    wait_job(c, c.post("/v1/edits/1/revert").json()["job_id"])
    wait_job(c, c.post("/v1/versions/0/restore").json()["job_id"])
    assert _hash(c) == h0
    wait_job(c, c.post("/v1/versions/2/restore").json()["job_id"])
    assert _hash(c) == h2 == _version(c, 5)["weights_hash"]
    assert c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2}).json()["version"] == 5


def test_redelivered_jobs_never_apply_twice(server: RunningServer) -> None:
    c = server.client()
    eid = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    assert wait_edit(c, eid)["status"] == "applied"
    job = wait_job(c, c.post(f"/v1/edits/{eid}/revert").json()["job_id"])
    h = _hash(c)
    for job_id in (1, job["id"]):  # the edit job and the revert job, delivered again
        server.services.queue.put(job_id)
    sentinel = c.post("/v1/edits", json={"prompt": "Water boils at", "target": "ten"}).json()["edit_ids"][0]
    wait_edit(c, sentinel)  # processed after the redeliveries
    versions = c.get("/v1/versions").json()
    assert [v["kind"] for v in versions["items"]] == ["edit", "revert", "edit", "base"]
    assert c.get(f"/v1/edits/{eid}").json()["status"] == "reverted"
    assert h != _hash(c)
