"""A database error in the middle of a job is an outage, not the job's fault: the worker steps
down, takes over again and runs the job to the end; it is never marked failed."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from sqlalchemy import select

from app.db import session_scope
from app.status import JobStatus
from app.tables import Job

from tests.app.conftest import wait_edit


def test_database_error_mid_edit_does_not_fail_the_edit(server_factory: Any) -> None:
    outage_mid_edit(server_factory(queue="memory"))


def test_database_error_mid_edit_with_a_shared_queue(transport: dict, server_factory: Any) -> None:
    outage_mid_edit(server_factory(**transport))


def outage_mid_edit(srv: Any) -> None:
    worker = srv.services.worker
    terms = worker.leader_terms
    compute = worker.runtime.compute
    calls = {"n": 0}

    def compute_during_an_outage(*args: Any, **kwargs: Any):
        calls["n"] += 1
        if calls["n"] == 1:  # the job is running: its rows were written, the delta not yet
            raise sqlalchemy.exc.OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return compute(*args, **kwargs)

    worker.runtime.compute = compute_during_an_outage
    c = srv.client()
    edit_id = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    edit = wait_edit(c, edit_id)
    assert calls["n"] >= 2  # the outage was hit, then the job ran again
    assert edit["status"] == "applied" and edit["applied_version"] == 1 and edit["error"] is None
    assert worker.leader_terms > terms  # it stepped down and took over, recovering the job
    with session_scope(srv.services.sessions) as s:
        jobs = s.scalars(select(Job).where(Job.edit_id == edit_id)).all()
        assert [(j.status, j.error) for j in jobs] == [(JobStatus.DONE, None)]


def test_a_job_error_that_is_not_an_outage_fails_the_job(server_factory: Any) -> None:
    srv = server_factory()
    worker = srv.services.worker

    def broken(*args: Any, **kwargs: Any):
        raise RuntimeError("the editor broke")

    worker.runtime.compute = broken
    c = srv.client()
    edit_id = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    edit = wait_edit(c, edit_id)
    assert edit["status"] == "failed" and "the editor broke" in edit["error"]
    assert c.get("/readyz").status_code == 200  # the worker lives on
