"""Hostile input on SQLite and PostgreSQL: ids past what the database holds, and revert /
restore requests racing each other. Every answer is a 4xx naming the problem, never a 500, and
the connection keeps working."""

from __future__ import annotations

import threading

import httpx

from tests.app.conftest import wait_edit, wait_job


def test_ids_past_the_database_columns_are_422_naming_the_parameter(server_factory, db_url: str) -> None:
    srv = server_factory(database_url=db_url)
    with srv.client() as c:  # one keep-alive connection for all of it
        for big in (2**31, 2**63, 2**64):
            for method, path, param in [
                ("GET", f"/v1/edits/{big}", "edit_id"), ("POST", f"/v1/edits/{big}/revert", "edit_id"),
                ("POST", f"/v1/edits/{big}/approve", "edit_id"), ("GET", f"/v1/jobs/{big}", "job_id"),
                ("GET", f"/v1/versions/{big}", "number"), ("POST", f"/v1/versions/{big}/restore", "number"),
                ("DELETE", f"/v1/keys/{big}", "key_id"),
            ]:
                r = c.request(method, path)
                assert r.status_code == 422 and param in r.text, (method, path, r.status_code, r.text)
            for path in ("/v1/edits", "/v1/versions"):
                r = c.get(path, params={"offset": big})
                assert r.status_code == 422 and "offset" in r.text, (path, r.text)
        assert c.get("/v1/edits/0").status_code == 422  # ids start at 1
        assert c.get(f"/v1/edits/{2**31 - 1}").status_code == 404  # the largest id: simply not there
        assert c.get("/v1/versions/0").status_code == 200  # and the connection still serves


def _race(n: int, send) -> list[httpx.Response]:
    """``n`` requests released at once."""
    start = threading.Barrier(n)
    out: list[httpx.Response] = [None] * n  # type: ignore[list-item]

    def one(i: int) -> None:
        start.wait()
        out[i] = send()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_reverts_and_restores_accept_exactly_one(server_factory, db_url: str) -> None:
    srv = server_factory(database_url=db_url)
    c = srv.client()
    eid = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    assert wait_edit(c, eid)["status"] == "applied"

    answers = _race(8, lambda: srv.client().post(f"/v1/edits/{eid}/revert"))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 7, [(r.status_code, r.text) for r in answers]
    job = wait_job(c, next(r for r in answers if r.status_code == 202).json()["job_id"])
    assert job["status"] == "done"
    reverts = c.get("/v1/versions", params={"kind": "revert"}).json()
    assert reverts["total"] == 1
    assert c.post(f"/v1/edits/{eid}/revert").status_code == 409  # reverted now: not applied

    answers = _race(8, lambda: srv.client().post("/v1/versions/1/restore"))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 7, [(r.status_code, r.text) for r in answers]
    job = wait_job(c, next(r for r in answers if r.status_code == 202).json()["job_id"])
    assert job["status"] == "done"
    assert c.get("/v1/versions", params={"kind": "restore"}).json()["total"] == 1
    again = c.post("/v1/versions/1/restore")
    assert again.status_code == 409 and "already live" in again.text
    assert c.post("/v1/versions/2/restore").status_code == 202  # another state: accepted


def test_openapi_declares_metrics_as_text_and_id_bounds(server) -> None:
    spec = server.client().get("/openapi.json").json()
    content = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]
    [param] = [p for p in spec["paths"]["/v1/edits/{edit_id}"]["get"]["parameters"] if p["name"] == "edit_id"]
    assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == 2**31 - 1
