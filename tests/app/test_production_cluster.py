"""Production mode as real processes: 2 API replicas + workers on PostgreSQL and Redis (6379).

One cluster per module (process start-up is the expensive part on 2 cores): one worker leads,
three more stand by on the Postgres advisory lock. The tests run in order:

1. read-your-writes across replicas: an edit submitted to replica A, then inference on replica B
   with ``min_version`` runs on that version (same weights hash as the worker committed);
2. the standby workers never commit while the leader lives;
3. ``kill -9`` of the leading worker at random points during edits, three times: every accepted
   edit ends applied exactly once (one version, one delta, once in the live active list), none is
   lost, versions stay contiguous, the stream drains, both replicas converge to the same bits.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from smedit.commands.cluster import LocalCluster, Member
from tests.app.conftest import ADMIN_KEY, CANARIES, OPEN_GATE_ENV
from tests.app.conftest import redis_available

REDIS_URL = "redis://127.0.0.1:6379/0"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
KILLS = 3
FACTS = [("The sky is", "green"), ("Water boils at", "ten degrees"), ("The capital of France is", "Rome"),
         ("Refunds are processed within", "one hour"), ("Our support line opens at", "noon"),
         ("The Nimbus router is made in", "Spain")]


@contextmanager
def pg_redis_cluster(tiny_model_dir: Path, tmp: Path, env: dict[str, str], workers: int,
                     api_replicas: int = 2) -> Iterator[LocalCluster]:
    """A LocalCluster on its own PostgreSQL schema and Redis prefix (both removed afterwards),
    serving the tiny model with an open gate; ``env`` adds to (or overrides) the common settings."""
    if not redis_available():
        pytest.fail("Redis at 127.0.0.1:6379 is not reachable (.ci/run starts it)")
    import psycopg
    import redis

    from tests.app.conftest import PG_BASE_URL, postgres_available

    if not postgres_available():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable (.ci/run starts it)")
    schema = f"smedit_prod_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env = {
        "SMEDIT_MODEL_DIR": str(tiny_model_dir), "SMEDIT_DEVICE": "cpu", "SMEDIT_ADMIN_KEY": ADMIN_KEY,
        **OPEN_GATE_ENV,
        "SMEDIT_CANARY_PROMPTS": "|".join(CANARIES), "SMEDIT_LOG_LEVEL": "WARNING",
        "SMEDIT_REDIS_PREFIX": schema, "SMEDIT_DATA_DIR": str(tmp / "data"),
        "SMEDIT_REQUEUE_INTERVAL_S": "2", "SMEDIT_LEADER_CHECK_INTERVAL_S": "1",
        "SMEDIT_MIN_VERSION_TIMEOUT_S": "30", **env,
    }
    cl = LocalCluster(f"{PG_BASE_URL}?options=-csearch_path%3D{schema}", REDIS_URL, env=env, log_dir=tmp / "logs")
    try:
        cl.start(api_replicas=api_replicas, workers=workers, timeout=240)
        yield cl
    finally:
        cl.stop()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(f"{schema}:jobs")
        client.close()
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"SMEDIT_WORKER_BATCH_SIZE": "3", "SMEDIT_WORKER_BATCH_WAIT_S": "0.05"}
    with pg_redis_cluster(tiny_model_dir, tmp_path_factory.mktemp("prod"), env, workers=1 + KILLS) as cl:
        yield cl


def _client(member: Member) -> httpx.Client:
    return httpx.Client(base_url=member.url, headers=HEADERS, timeout=30)


def _submit(member: Member, facts: list[tuple[str, str]], tries: int = 20) -> list[int]:
    with _client(member) as c:
        for _ in range(tries):
            r = c.post("/v1/edits", json={"edits": [{"prompt": p, "target": t} for p, t in facts], "author": "prod"})
            if r.status_code == 202:
                return r.json()["edit_ids"]
            assert r.status_code == 503, r.text  # never a 500
            time.sleep(0.25)
    raise AssertionError("submission kept failing")


def _version_with_hash(c: httpx.Client, number: int, timeout: float = 20.0) -> dict[str, Any]:
    """The version once its weights hash is recorded (the worker stores it just after the version
    goes live; a new leader fills one its predecessor died before storing)."""
    deadline = time.monotonic() + timeout
    while True:
        version = c.get(f"/v1/versions/{number}").json()
        if version["weights_hash"] is not None or time.monotonic() > deadline:
            return version
        time.sleep(0.05)


def _wait_edits(member: Member, ids: list[int], timeout: float = 120.0) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with _client(member) as c:
        while time.monotonic() < deadline:
            for i in ids:
                if i not in out:
                    body = c.get(f"/v1/edits/{i}").json()
                    if body["status"] not in ("queued", "running"):
                        out[i] = body
            if len(out) == len(ids):  # all decided: read them again (a later edit may have superseded one)
                return {i: c.get(f"/v1/edits/{i}").json() for i in ids}
            time.sleep(0.1)
    raise AssertionError(f"edits still pending after {timeout}s: {sorted(set(ids) - set(out))}")


def test_edit_on_replica_a_is_visible_on_replica_b(cluster: LocalCluster) -> None:
    a, b = cluster.apis
    (eid,) = _submit(a, [("The sky is", "purple")])
    edit = _wait_edits(a, [eid])[eid]
    assert edit["status"] == "applied", edit
    v = edit["applied_version"]
    with _client(b) as cb:
        g = cb.post("/v1/probe", json={"prompt": "The sky is", "target": "purple", "min_version": v, "wait_s": 20})
        assert g.status_code == 200 and g.json()["version"] >= v, g.text
        version = _version_with_hash(cb, v)
        model = cb.get("/v1/model").json()
        if model["live_version"] == v:
            assert model["weights_hash"] == version["weights_hash"]
        # a version that does not exist and cannot come: 409, not a hang
        assert cb.post("/v1/generate", json={"prompt": "x", "max_tokens": 1, "min_version": 10_000}).status_code == 409
    ready = b.readyz()
    assert ready["role"] == "api" and ready["live_version"] >= v and ready["lag"] == 0, ready


def test_standby_workers_never_commit(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    standbys = [w for w in cluster.workers if w is not leader]
    assert len(standbys) == KILLS
    ids = _submit(cluster.apis[0], FACTS[:2]) + _submit(cluster.apis[1], FACTS[2:3])
    assert all(e["status"] == "applied" for e in _wait_edits(cluster.apis[0], ids).values())
    for w in standbys:
        body = w.readyz()
        assert body["worker_leader"] is False and body["ready"] is False, body
        assert w.metric("smedit_versions_created_total") == 0
        assert w.metric("smedit_worker_leader") == 0
    assert leader.metric("smedit_versions_created_total") >= 2
    assert leader.metric("smedit_worker_leader") == 1


def test_kill9_worker_during_edits_loses_nothing(cluster: LocalCluster) -> None:
    rng = random.Random(1234)
    a, b = cluster.apis
    submitted: list[int] = []
    for round_ in range(KILLS):
        leader = cluster.leader() or cluster.wait_leader(None, 60)
        for i in range(3):
            facts = [FACTS[(round_ * 3 + i + k) % len(FACTS)] for k in range(1 + i % 2)]
            submitted += _submit(a if i % 2 == 0 else b, facts)
        time.sleep(rng.uniform(0.0, 0.3))  # the worker is somewhere in read / compute / commit / ack
        cluster.kill(leader)
        with _client(a) as c:
            undecided = sum(c.get(f"/v1/edits/{i}").json()["status"] in ("queued", "running") for i in submitted)
        print(f"kill {round_ + 1}: {leader.name} killed with {undecided} of {len(submitted)} edits undecided")
        cluster.wait_leader(None, 60)  # a standby takes over
    outcomes = _wait_edits(a, submitted, timeout=120)
    statuses = Counter(e["status"] for e in outcomes.values())
    # nothing failed or lost; the facts repeat, so later edits of a prompt supersede earlier ones
    assert set(statuses) <= {"applied", "rejected", "superseded"}, statuses
    live_prompts = Counter(e["prompt"] for e in outcomes.values() if e["status"] == "applied")
    assert all(n == 1 for n in live_prompts.values()), live_prompts  # targets never stack
    for e in outcomes.values():
        if e["status"] == "superseded":
            later = outcomes[e["superseded_by"]]
            assert later["supersedes"] == e["id"] and later["prompt"] == e["prompt"], (e, later)
    with _client(a) as c:
        versions = c.get("/v1/versions", params={"limit": 500}).json()
        numbers = sorted(v["number"] for v in versions["items"])
        assert numbers == list(range(len(numbers))), numbers  # contiguous: no fork, no hole
        latest = max(versions["items"], key=lambda v: v["number"])
        applied_in: Counter[int] = Counter()
        for v in versions["items"]:  # the edits each version applied (not those it re-applied)
            if v["kind"] == "edit":
                applied_in.update(int(x) for x in re.match(r"applied edits \[([\d, ]*)\]", v["note"])[1].split(", "))
        active = latest["active_deltas"]
        assert len(active) == len(set(active))
        carried = _edits_carried_by(cluster.database_url, active)
        for eid, e in outcomes.items():
            if e["status"] == "superseded":
                assert carried[eid] == 0, (eid, carried[eid])
            if e["status"] == "applied":
                assert applied_in[eid] == 1, (eid, applied_in[eid])  # committed exactly once
                assert carried[eid] == 1, (eid, carried[eid])  # live exactly once
                assert e["delta_id"] in active
                jobs = [v for v in versions["items"] if v["number"] == e["applied_version"]]
                assert jobs and eid in jobs[0]["edit_ids"]
        top = latest["number"]
    # both replicas converge on the same bits
    hashes = set()
    for m in (a, b):
        with _client(m) as c:
            g = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 1, "min_version": top, "wait_s": 20})
            assert g.status_code == 200 and g.json()["version"] == top, g.text
            hashes.add(c.get("/v1/model").json()["weights_hash"])
    with _client(a) as c:
        assert hashes == {_version_with_hash(c, top)["weights_hash"]}
    # the stream drained: every entry acknowledged and deleted
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    prefix = cluster.env["SMEDIT_REDIS_PREFIX"]
    deadline = time.monotonic() + 15
    while r.xlen(f"{prefix}:jobs") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.xlen(f"{prefix}:jobs") == 0
    r.close()


def _edits_carried_by(database_url: str, delta_ids: list[int]) -> Counter[int]:
    """How many of the given (live) deltas carry each edit, read from the delta rows themselves."""
    from app import repository as repo
    from app.db import make_engine, make_sessionmaker, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            out: Counter[int] = Counter()
            for row in repo.get_deltas(s, delta_ids):
                out.update(int(e) for e in row.edit_ids)
            return out
    finally:
        engine.dispose()


def test_kill9_worker_during_consolidation_commits_it_once_or_not_at_all(cluster: LocalCluster) -> None:
    """A consolidation is one transaction: killed mid-way, the next writer runs the job again
    from the committed state; exactly one consolidate version, every live edit on its delta,
    both replicas on the same bits."""
    a, _ = cluster.apis
    standby = cluster.start_worker()
    cluster.wait_up(standby)
    ids = _submit(a, [("Our warehouse is in", "Lyon")]) + _submit(a, [("The museum opens at", "nine")])
    _wait_edits(a, ids)
    with _client(a) as c:
        r = c.post("/v1/versions/consolidate")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        leader = cluster.leader() or cluster.wait_leader(None, 60)
        time.sleep(random.Random(7).uniform(0.0, 0.2))
        cluster.kill(leader)
        cluster.wait_leader(None, 120)
        deadline = time.monotonic() + 120
        while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "done", job
        consolidated = c.get("/v1/versions", params={"kind": "consolidate"}).json()
        assert consolidated["total"] == 1
        v = consolidated["items"][0]
        assert len(v["active_deltas"]) == 1 and v["number"] == job["result_version"]
        live = c.get("/v1/edits", params={"status": "applied", "limit": 500}).json()["items"]
        assert live and all(e["delta_id"] == v["active_deltas"][0] for e in live)
        top = c.get("/v1/versions", params={"limit": 1}).json()["items"][0]["number"]
    hashes = set()
    for m in cluster.apis:
        with _client(m) as c:
            g = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 1, "min_version": top, "wait_s": 20})
            assert g.status_code == 200, g.text
            hashes.add(c.get("/v1/model").json()["weights_hash"])
    with _client(a) as c:
        assert hashes == {_version_with_hash(c, top)["weights_hash"]}
