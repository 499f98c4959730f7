"""``kill -9`` of the worker process at the moments that matter, 20 times, on PostgreSQL + Redis.

Real processes (``LocalCluster``): two API replicas and one worker at a time. Each round starts
worker processes one after the other, each armed with ``SMEDIT_CRASH_AT`` (:mod:`app.crash_points`):
it takes the writer lock, recovers what its predecessor left, works until it reaches its point and
sends itself ``SIGKILL``. A plain worker then takes over and finishes. After every round:

- every armed worker died by SIGKILL at its point (its log says which), none survived it;
- every accepted edit, revert, restore and consolidation is decided, none lost, none failed;
- each applied edit was committed in exactly one version and is carried by exactly one live delta;
- versions are contiguous (no fork, no hole) and every one has its weights hash recorded (a writer
  that died before storing it is replaced by one that stores it at take-over);
- the plain worker's weights, both replicas' weights and the latest version's stored hash are
  the same bits; the Redis stream is drained.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smedit.commands.cluster import LocalCluster, Member
from tests.app.test_production_cluster import (
    _client, _edits_carried_by, _submit, _version_with_hash, _wait_edits, pg_redis_cluster,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
KILLS: list[int] = []  # one entry per armed worker that died at its point


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {
        "SMEDIT_LOG_LEVEL": "INFO",  # the armed workers' "crash point reached" lines
        # one job per commit, so each armed worker commits (at most) one version before it dies
        "SMEDIT_WORKER_BATCH_SIZE": "1", "SMEDIT_WORKER_BATCH_WAIT_S": "0", "SMEDIT_FOLLOW_INTERVAL_S": "1",
    }
    with pg_redis_cluster(tiny_model_dir, tmp_path_factory.mktemp("crash"), env, workers=1) as cl:
        yield cl


# ---- one round: armed workers one after the other, then a plain one ------------------------------
def _stop_plain_workers(cluster: LocalCluster) -> None:
    """SIGTERM: a clean step-down (not one of the counted kills)."""
    for w in cluster.workers:
        cluster.kill(w, signal.SIGTERM)


def _run_armed(cluster: LocalCluster, points: list[str], timeout: float = 180.0) -> list[Member]:
    """One worker per point; each must die at its point. Workers armed at the same point start
    together (whichever takes the lock first dies first: the order does not matter, and the
    start-ups overlap); a different point waits until the previous ones are dead."""
    dead: list[Member] = []
    for point, group in itertools.groupby(points):
        workers = [cluster.start_worker(env={"SMEDIT_CRASH_AT": point}) for _ in group]
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                w.proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{w.name} armed at {point} did not die in {timeout}s:\n{w.log_tail()}") from None
            log = w.log_path.read_text(errors="replace")
            assert w.proc.returncode == -signal.SIGKILL, (point, w.proc.returncode, w.log_tail())
            assert "crash point reached" in log and f'"point": "{point}"' in log, (point, w.log_tail())
            KILLS.append(1)
            dead.append(w)
    return dead


def _finish_with_plain_worker(cluster: LocalCluster) -> Member:
    w = cluster.start_worker()
    cluster.wait_leader(w, 240)
    return w


def _wait_jobs(c: httpx.Client, job_ids: list[int], timeout: float = 120.0) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    out: dict[int, dict[str, Any]] = {}
    while len(out) < len(job_ids):
        assert time.monotonic() < deadline, f"jobs still open: {sorted(set(job_ids) - set(out))}"
        for j in job_ids:
            if j not in out and (body := c.get(f"/v1/jobs/{j}").json())["status"] not in ("pending", "running"):
                out[j] = body
        time.sleep(0.1)
    return out


def _check_state(cluster: LocalCluster, plain: Member, applied: list[int]) -> None:
    """The history is one clean line, each applied edit is live exactly once, and the plain
    worker, both replicas and the stored hash agree on the bits."""
    a = cluster.apis[0]
    with _client(a) as c:
        versions = c.get("/v1/versions", params={"limit": 500}).json()["items"]
        numbers = sorted(v["number"] for v in versions)
        assert numbers == list(range(len(numbers))), numbers
        top = max(numbers)
        committed: Counter[int] = Counter()  # the edits each edit version applied
        for v in versions:
            if v["kind"] == "edit":
                committed.update(int(x) for x in re.match(r"applied edits \[([\d, ]*)\]", v["note"])[1].split(", "))
        assert all(n == 1 for n in committed.values()), committed
        latest = _version_with_hash(c, top)
        assert all(_version_with_hash(c, v["number"])["weights_hash"] for v in versions)  # none left unhashed
        active = latest["active_deltas"]
        assert len(active) == len(set(active))
        carried = _edits_carried_by(cluster.database_url, active)
        live = c.get("/v1/edits", params={"status": "applied", "limit": 500}).json()["items"]
        for e in live:
            assert carried[e["id"]] == 1 and e["delta_id"] in active, (e, carried[e["id"]])
        assert sum(carried.values()) == len(live)  # no delta carries an edit that is not live
        for eid in applied:
            assert committed[eid] == 1, (eid, committed[eid])
    deadline = time.monotonic() + 20
    while (body := plain.readyz()) is None or body["live_version"] != top or body["weights_hash"] is None:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    hashes = {body["weights_hash"], latest["weights_hash"]}
    for m in cluster.apis:
        with _client(m) as c:
            g = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 1, "min_version": top, "wait_s": 20})
            assert g.status_code == 200 and g.json()["version"] == top, g.text
            hashes.add(c.get("/v1/model").json()["weights_hash"])
    assert len(hashes) == 1, hashes
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 15
    while r.xlen(f"{cluster.env['SMEDIT_REDIS_PREFIX']}:jobs") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.xlen(f"{cluster.env['SMEDIT_REDIS_PREFIX']}:jobs") == 0
    r.close()


def _edit_round(cluster: LocalCluster, points: list[str], n_edits: int, tag: str) -> list[int]:
    _stop_plain_workers(cluster)
    a, b = cluster.apis
    ids: list[int] = []
    for i in range(n_edits):  # queued while no worker runs: the armed ones find them waiting
        ids += _submit(a if i % 2 == 0 else b, [(f"The {tag} code of unit {i} is", f"{tag}{i}")])
    _run_armed(cluster, points)
    plain = _finish_with_plain_worker(cluster)
    outcomes = _wait_edits(a, ids)
    assert all(e["status"] == "applied" for e in outcomes.values()), outcomes
    _check_state(cluster, plain, ids)
    return ids


# ---- the rounds (they run in order and build on each other's history) ---------------------------
def test_killed_just_after_each_edit_commit(cluster: LocalCluster) -> None:
    """Committed, not yet live, announced, hashed or acknowledged: the next writer must not apply
    it again (its job is done), must record its hash, and the replicas must still reach it."""
    _edit_round(cluster, ["after_edit_commit"] * 4, n_edits=5, tag="alpha")


def test_killed_inside_an_open_edit_commit(cluster: LocalCluster) -> None:
    """The transaction dies with the process: nothing of it exists, the edit is applied later, once."""
    _edit_round(cluster, ["edit_commit_open"] * 4, n_edits=2, tag="beta")


def test_killed_before_acknowledging_the_queue(cluster: LocalCluster) -> None:
    """The entry is redelivered to the next writer, which sees the job done and skips it."""
    _edit_round(cluster, ["before_ack"] * 3, n_edits=4, tag="gamma")


def test_killed_during_recovery(cluster: LocalCluster) -> None:
    """The first writer dies after a commit, leaving an unacknowledged entry and queued work; the
    next three die half-way through taking over (running jobs reset, nothing re-enqueued)."""
    _edit_round(cluster, ["after_edit_commit", "during_recovery", "during_recovery", "during_recovery"],
                n_edits=3, tag="delta")


def test_killed_just_after_revert_and_restore_commits(cluster: LocalCluster) -> None:
    _stop_plain_workers(cluster)
    a = cluster.apis[0]
    with _client(a) as c:
        live = c.get("/v1/edits", params={"status": "applied", "limit": 500}).json()["items"]
        victims = sorted(e["id"] for e in live)[:2]
        jobs = [c.post(f"/v1/edits/{v}/revert", json={"reason": "crash test"}).json()["job_id"] for v in victims]
        target = sorted(e["applied_version"] for e in live)[len(live) // 2]  # drops the later half
        r = c.post(f"/v1/versions/{target}/restore", json={"reason": "crash test"})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["job_id"])
    _run_armed(cluster, ["after_revert_commit"] * 3)
    plain = _finish_with_plain_worker(cluster)
    with _client(a) as c:
        done = _wait_jobs(c, jobs)
        assert all(j["status"] == "done" for j in done.values()), done
        versions = c.get("/v1/versions", params={"limit": 500}).json()["items"]
        by_job = Counter(v["job_id"] for v in versions if v["kind"] in ("revert", "restore"))
        assert all(by_job[j] == 1 for j in jobs), by_job  # each committed exactly once
        restored = next(v for v in versions if v["job_id"] == jobs[-1])
        assert restored["active_deltas"] == c.get(f"/v1/versions/{target}").json()["active_deltas"]
    _check_state(cluster, plain, [])


def test_killed_inside_and_just_after_a_consolidation(cluster: LocalCluster) -> None:
    _stop_plain_workers(cluster)
    a = cluster.apis[0]
    with _client(a) as c:
        r = c.post("/v1/versions/consolidate")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
    _run_armed(cluster, ["consolidation_open", "after_consolidation_commit"])
    plain = _finish_with_plain_worker(cluster)
    with _client(a) as c:
        job = _wait_jobs(c, [job_id])[job_id]
        assert job["status"] == "done", job
        consolidated = c.get("/v1/versions", params={"kind": "consolidate"}).json()
        assert consolidated["total"] == 1 and len(consolidated["items"][0]["active_deltas"]) == 1
    _check_state(cluster, plain, [])


def test_twenty_kills_in_all() -> None:
    """The goal: at least 20 kills at chosen moments, with nothing lost or applied twice (each
    round above asserts that for its own kills)."""
    assert len(KILLS) >= 20, len(KILLS)
